"""quiet_internals: the terminal keeps caregpt's own lines; everything else lands in the log file."""

from __future__ import annotations

import os
import subprocess
import sys

import pexpect

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



FORWARDED = r"""
import logging, sys
from caregpt.console import quiet_internals
log = quiet_internals(sys.argv[1])
from ray._private.worker import print_worker_logs   # what the driver runs for each batch Ray forwards
print_worker_logs({"pid": 11, "actor_name": "RayTrainWorker", "lines": [
    "[caregpt] [####....] step 5/20 | loss 7.1", "Setting accelerator to CPU.", "loaded model on cpu"]}, sys.stdout)
print_worker_logs({"pid": "raylet", "lines": ["WARNING: 8 PYTHON worker processes have been started"]}, sys.stdout)
log.restore()
"""


def test_only_progress_lines_of_what_ray_forwards_reach_the_terminal(tmp_path):
    path = tmp_path / "run.log"
    done = subprocess.run([sys.executable, "-c", FORWARDED, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert "RayTrainWorker pid=11" in line and line.endswith("[caregpt] [####....] step 5/20 | loss 7.1")
    text = path.read_text()
    assert "Setting accelerator to CPU." in text and "loaded model on cpu" in text and "PYTHON worker processes" in text
    assert "step 5/20" not in text


AT_TERMINAL = r"""
import os, sys
from caregpt.console import quiet_at_terminal
with quiet_at_terminal(sys.argv[1]):
    print("ours: step 1/2")
    os.write(2, b"ray internals\n")
print("done")
"""


def _at_terminal(tmp_path, verbose: str) -> str:
    child = pexpect.spawn(sys.executable, ["-c", AT_TERMINAL, str(tmp_path)], encoding="utf-8", timeout=60,
                          env={**os.environ, "CAREGPT_VERBOSE": verbose})
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    return child.before


def test_at_a_terminal_the_internals_go_to_a_log_whose_path_is_shown(tmp_path):
    shown = _at_terminal(tmp_path, verbose="0")
    assert "ours: step 1/2" in shown and "done" in shown and "ray internals" not in shown
    (log,) = (tmp_path / "logs").glob("caregpt-*.log")
    assert "ray internals" in log.read_text()
    assert f"Ray and library logs of this run: {log}" in shown


def test_verbose_or_read_by_a_program_everything_stays_on_the_streams(tmp_path):
    shown = _at_terminal(tmp_path, verbose="1")
    assert "ours: step 1/2" in shown and "ray internals" in shown and "logs of this run" not in shown
    piped = subprocess.run([sys.executable, "-c", AT_TERMINAL, str(tmp_path)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "CAREGPT_VERBOSE": "0"})
    assert piped.stdout.splitlines() == ["ours: step 1/2", "done"] and piped.stderr == "ray internals\n"
    assert not (tmp_path / "logs").exists()
