"""Build (once) and describe the LLaMA-Factory venv the training benchmark compares against.

    python benchmarks/peers/setup_llamafactory.py [--venv DIR]     # prints the venv's python when ready

``python3.11 -m venv``; the CPU torch wheel first (else pip resolves a multi-GB CUDA build), then
``llamafactory==VERSION --no-deps`` and its declared requirements under a ``torch==PIN`` constraint, except
torchaudio and torchvision: no torchaudio on PyPI builds against that torch, and the PyPI torchvision cannot load
its operators next to the CPU torch. Text SFT needs neither (transformers treats torchvision as optional;
LLaMA-Factory imports torchaudio at module level only for audio), so ``stubs/torchaudio`` (raises on use) goes
on the run's PYTHONPATH. A marker file says the venv is complete; it is reused until deleted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

VERSION = "0.9.5"
TORCH_PIN = "torch==2.13.0"
SKIPPED = {"torch", "torchaudio", "torchvision"}
MARKER = "caregpt-bench-ready.json"
STUBS = Path(__file__).resolve().parent / "stubs"
DEFAULT_VENV = "/tmp/caregpt-bench-lf-venv"


def run_env(extra_pythonpath: str = "") -> dict[str, str]:
    """Environment for a run under the venv: the stub first on PYTHONPATH, nothing fetched from the hub."""
    return {"PYTHONPATH": str(STUBS) + (f":{extra_pythonpath}" if extra_pythonpath else ""),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_DISABLED": "true"}


def _pip(python: Path, *args: str, log) -> None:
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode:
        raise RuntimeError(f"`pip install {' '.join(args)}` failed; see {log.name}")


def _requirements(python: Path) -> list[str]:
    """llamafactory's declared requirements, minus extras and the SKIPPED packages."""
    listing = subprocess.run([str(python), "-c", "import importlib.metadata as m; print('\\n'.join(m.requires('llamafactory') or []))"],
                             check=True, capture_output=True, text=True).stdout.splitlines()
    keep = []
    for requirement in listing:
        if "extra ==" in requirement:
            continue
        spec = requirement.split(";")[0].strip()
        bare = spec.split("[")[0]
        for sep in "<>=!~ (":
            bare = bare.split(sep)[0]
        if bare.strip().lower() not in SKIPPED:
            keep.append(spec)
    return keep


def ensure_venv(venv: Path, log_path: Path) -> Path:
    """The venv's python, building the venv first when it is not complete."""
    python = venv / "bin" / "python"
    if (venv / MARKER).is_file() and python.is_file():
        return python
    interpreter = shutil.which("python3.11") or shutil.which("python3")
    if interpreter is None:
        raise RuntimeError("no python3.11 / python3 on PATH to create the LLaMA-Factory venv")
    print(f"[bench] building the LLaMA-Factory {VERSION} venv in {venv} (log: {log_path}) ...", flush=True)
    start = time.perf_counter()
    shutil.rmtree(venv, ignore_errors=True)
    with open(log_path, "a", encoding="utf-8") as log:
        subprocess.run([interpreter, "-m", "venv", str(venv)], check=True, stdout=log, stderr=subprocess.STDOUT)
        _pip(python, "--upgrade", "pip", log=log)
        _pip(python, TORCH_PIN, log=log)
        _pip(python, "--no-deps", f"llamafactory=={VERSION}", log=log)
        constraints = venv / "caregpt-bench-constraints.txt"
        constraints.write_text(TORCH_PIN + "\n")
        _pip(python, "-c", str(constraints), *_requirements(python), log=log)
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True).stdout.splitlines()
    (venv / MARKER).write_text(json.dumps({"llamafactory": VERSION, "built_seconds": round(time.perf_counter() - start, 1),
                                           "skipped": sorted(SKIPPED), "freeze": freeze}, indent=2))
    print(f"[bench] LLaMA-Factory venv ready in {time.perf_counter() - start:.0f}s", flush=True)
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Build the LLaMA-Factory {VERSION} benchmark venv (cached) and print its python.")
    parser.add_argument("--venv", default=DEFAULT_VENV, help=f"venv folder (default {DEFAULT_VENV})")
    parser.add_argument("--log", default=None, help="pip log (default: VENV.install.log)")
    args = parser.parse_args(argv)
    venv = Path(args.venv).resolve()
    try:
        print(ensure_venv(venv, Path(args.log or f"{venv}.install.log")))
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"LLaMA-Factory venv could not be built: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
