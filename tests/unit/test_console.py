"""quiet_internals: the terminal keeps caregpt's own lines; everything else lands in the log file."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import logging, os, subprocess, sys, warnings
from caregpt.console import quiet_internals
logging.basicConfig(level=logging.INFO)          # made before: its handler must follow stderr into the log
log = quiet_internals(sys.argv[1])
print("ours: progress line")
sys.stderr.write("library stderr\n")
os.write(1, b"c-level stdout\n")
os.write(2, b"c-level stderr\n")
warnings.warn("a library warning")
logging.getLogger("ray.data").info("ray info")
logging.getLogger("caregpt.x").info("caregpt info")
logging.getLogger("caregpt.x").warning("caregpt warning")
chatty = logging.getLogger("chatty.library")     # a library that logs to stdout, set up after the redirect
chatty.addHandler(logging.StreamHandler(sys.stdout))
chatty.propagate = False
chatty.warning("library warning on stdout")
subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"])
log.restore()
print("after restore")
sys.stderr.write("stderr after restore\n")
"""


def test_terminal_gets_our_lines_and_the_log_gets_the_rest(tmp_path):
    path = tmp_path / "logs" / "run.log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ours: progress line", "after restore"]
    assert done.stderr.splitlines() == ["WARNING caregpt.x: caregpt warning", "stderr after restore"]
    text = path.read_text()
    for line in ("library stderr", "c-level stdout", "c-level stderr", "a library warning", "ray info",
                 "caregpt info", "caregpt warning", "child out", "child err", "library warning on stdout"):
        assert line in text, line
    assert "ours: progress line" not in text and "after restore" not in text


def test_worker_hook_sends_library_logging_on_stdout_to_stderr():
    """What Ray runs in each worker while quiet: print() stays on stdout (forwarded to the terminal), a library
    logger bound to stdout moves to stderr (forwarded into the log file)."""
    script = ("import logging, sys\nfrom caregpt.console import quiet_worker\nquiet_worker()\n"
              "chatty = logging.getLogger('chatty'); chatty.addHandler(logging.StreamHandler(sys.stdout))\n"
              "chatty.warning('accelerator notice')\nprint('[caregpt] step 5/10')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[caregpt] step 5/10"] and done.stderr.splitlines() == ["accelerator notice"]
