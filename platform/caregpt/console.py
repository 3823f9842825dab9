"""What a person at the terminal sees: caregpt's own progress lines; the internals go to a log file.

A pipeline on an embedded Ray prints hundreds of lines that are not ours: Ray Data's progress logs,
Ray Train's `Reporting training result ...` records, Serve controller and proxy logs, C++ core-worker
warnings, transformers' and DeepSpeed's notices, tqdm bars. `quiet_internals(path)` keeps them all,
in one file, and leaves the terminal to what caregpt prints:

- the terminal's stdout is kept as Python's `sys.stdout`, so `print()` (ours, and the progress lines the
  training workers write to their stdout, which Ray forwards there) still reaches it, while a logging
  handler some library bound to sys.stdout, and the rest of what Ray forwards, write to the log;
- file descriptors 1 and 2 point at the log file, so whatever writes to them directly (Ray's C++ logs,
  child processes) lands there;
- Python's `sys.stderr` is the log file: logging's default handlers, Ray's own log handlers (they write to
  sys.stderr when they emit), warnings, tqdm bars and the stderr Ray forwards from its workers;
- caregpt's own WARNING and ERROR records still reach the terminal.

`--verbose` (CAREGPT_VERBOSE=1) skips all this. Call it before Ray starts: Ray's processes inherit the
descriptors. Nothing here logs or prints patient text.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator


# Ray prints what its workers write from this module of the driver (print_worker_logs)
_RAY_FORWARDER = os.path.join("ray", "_private", "worker.py")
PROGRESS_MARK = "[caregpt] "  # what the training workers put before a progress line


class _Terminal(io.TextIOBase):
    """Python's sys.stdout while quiet: print() reaches the terminal, internals that write to stdout do not.

    - a logging handler some library bound to sys.stdout (DeepSpeed's, made when it is first imported, long
      after the redirection) writes to the log file;
    - of what Ray forwards from its workers and raylets, only caregpt's progress lines reach the terminal:
      the rest (library notices, raylet warnings) is internals like any other.
    print() writes a line and then its newline separately: the newline goes where its line went.
    """

    def __init__(self, terminal: IO[str], log: IO[str]):
        self.terminal, self.log = terminal, log
        self._last = terminal

    def write(self, text: str) -> int:
        # the few frames above: Ray's print_worker_logs calls print(), which Ray's tqdm support may wrap
        callers = []
        frame = sys._getframe(1)
        while frame is not None and len(callers) < 4:
            callers.append(frame.f_code.co_filename)
            frame = frame.f_back
        if callers[0] == logging.__file__:
            target = self.log
        elif any(name.endswith(_RAY_FORWARDER) for name in callers):
            target = self._last if text == "\n" else (self.terminal if PROGRESS_MARK in text else self.log)
        else:
            target = self.terminal
        self._last = target
        return target.write(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.terminal.isatty()

    def fileno(self) -> int:
        return self.terminal.fileno()

    @property
    def encoding(self) -> str:
        return self.terminal.encoding


def verbose_requested() -> bool:
    return os.environ.get("CAREGPT_VERBOSE", "0") == "1"


_active: InternalsLog | None = None


def is_quiet() -> bool:
    """Whether this process sends the internals to a log file."""
    return _active is not None


@dataclass
class InternalsLog:
    """An active redirection; `restore()` puts the terminal back (the log file stays)."""

    path: Path
    console: IO[str]  # the terminal, for lines that must be seen
    _saved_fds: tuple[int, int] = (-1, -1)
    _saved_streams: tuple = ()
    _handlers: list = field(default_factory=list)

    def restore(self) -> None:
        if self._saved_fds[0] < 0:
            return
        for handler, logger in self._handlers:
            logger.removeHandler(handler)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved_fds[0], 1)
        os.dup2(self._saved_fds[1], 2)
        os.close(self._saved_fds[0])
        os.close(self._saved_fds[1])
        sys.stdout, sys.stderr = self._saved_streams
        self._saved_fds = (-1, -1)
        global _active
        _active = None


def default_log_path(workdir: str | Path | None = None) -> Path:
    """workdir/logs/caregpt-<time>.log, or ./caregpt-logs/... when no workdir is given."""
    root = Path(workdir) / "logs" if workdir else Path("caregpt-logs")
    return root.resolve() / f"caregpt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def quiet_internals(path: str | Path) -> InternalsLog:
    """Send everything that is not caregpt's own output to `path` (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    # the terminal, as Python streams of their own (closing them must not close the saved descriptors)
    console_out = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8", errors="replace")
    console_err = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding="utf-8", errors="replace")
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 (lives for the process)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    streams = (sys.stdout, sys.stderr)
    sys.stdout, sys.stderr = _Terminal(console_out, log), log
    # libraries' switches for their own chatter; they only affect what would have gone to the log anyway
    os.environ.setdefault("CAREGPT_PROGRESS", "0")  # Ray Data logs its progress when stdout is not a terminal
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    handler = logging.StreamHandler(console_err)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("caregpt")
    ours.addHandler(handler)
    for existing in logging.getLogger().handlers:  # a handler made earlier still holds the old stderr
        if isinstance(existing, logging.StreamHandler) and existing.stream in streams:
            existing.setStream(log)
    global _active
    _active = InternalsLog(path, console_out, (saved_out, saved_err), streams, [(handler, ours)])
    return _active


@contextlib.contextmanager
def quiet_at_terminal(workdir: str | Path | None) -> Iterator[InternalsLog | None]:
    """quiet_internals for a verb a person runs at a terminal; the internals go to workdir/logs/.

    Only when stdout is a terminal and CAREGPT_VERBOSE is not 1: output read by a program (a pipe, `ray job
    submit`, CI, the fine-tuning service's runner) stays complete. Enter it before Ray starts.
    """
    if verbose_requested() or not sys.stdout.isatty() or is_quiet():
        yield None
        return
    log = quiet_internals(default_log_path(workdir))
    try:
        yield log
    finally:
        log.restore()  # before an error propagates: its traceback reaches the terminal
        print(f"Ray and library logs of this run: {log.path}  (CAREGPT_VERBOSE=1 shows them here)")
