"""What a person at the terminal sees: caregpt's own progress lines; the internals go to a log file.

A pipeline on an embedded Ray prints hundreds of lines that are not ours: Ray Data's progress logs,
Ray Train's `Reporting training result ...` records, Serve controller and proxy logs, C++ core-worker
warnings, transformers' and DeepSpeed's notices, tqdm bars. `quiet_internals(path)` keeps them all,
in one file, and leaves the terminal to what caregpt prints:

- the terminal's stdout is kept as Python's `sys.stdout`, so `print()` (ours, and the progress lines the
  training workers write to their stdout, which Ray forwards there) still reaches it, while a logging
  handler some library bound to sys.stdout writes to the log;
- file descriptors 1 and 2 point at the log file, so whatever writes to them directly (Ray's C++ logs,
  child processes) lands there;
- Python's `sys.stderr` is the log file: logging's default handlers, Ray's own log handlers (they write to
  sys.stderr when they emit), warnings, tqdm bars and the stderr Ray forwards from its workers;
- caregpt's own WARNING and ERROR records still reach the terminal.

`--verbose` (CAREGPT_VERBOSE=1) skips all this. Call it before Ray starts: Ray's processes inherit the
descriptors. Nothing here logs or prints patient text.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class _Terminal(io.TextIOBase):
    """Python's sys.stdout while quiet: print() reaches the terminal, a logging handler bound to stdout does not.

    Some libraries give their logger a StreamHandler on sys.stdout (DeepSpeed does, when it is first
    imported, long after this redirection). Their records are internals like any other: a write coming
    from the logging module goes to the log file instead.
    """

    def __init__(self, terminal: IO[str], log: IO[str]):
        self.terminal, self.log = terminal, log

    def write(self, text: str) -> int:
        caller = sys._getframe(1).f_code.co_filename
        target = self.log if caller == logging.__file__ else self.terminal
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
    """Whether this process sends the internals to a log file (ensure_ray then quiets its workers too)."""
    return _active is not None


def quiet_worker() -> None:
    """Ray's worker_process_setup_hook while quiet: a library's logging handler bound to the worker's stdout
    (DeepSpeed's accelerator notice) writes to its stderr instead, which Ray forwards into the log file;
    what the worker prints (the training progress lines) still reaches the terminal."""
    try:
        sys.stdout = _Terminal(sys.stdout, sys.stderr)
    except Exception:  # noqa: BLE001 -- never stop a worker over its console
        pass


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
