"""Publish a finished job's adapter into the app's adapter root, named ``ft:<base>:<suffix>:<job-id>``.

The serving catalog reads the adapter root on every request, so the new name is listed by /v1/models and
served through multiplexing at once, with no redeploy. Files are copied into a hidden temporary folder and
renamed into place, so a replica never loads a half-copied adapter.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from caregpt.finetune.storage import Storage
from caregpt.finetune.tenancy import write_owner
from caregpt.models.adapters import ADAPTER_CONFIG_NAME

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# what a served adapter needs; checkpoints, logs and plots stay in the job folder
_SERVED = (".json", ".safetensors", ".model", ".txt", ".yaml", ".jinja")


def fine_tuned_name(base: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's shape ft:<base>:<suffix>:<id>, with the base made a plain name (no '/' or spaces)."""
    base_part = _UNSAFE.sub("-", base).strip("-.")[:40] or "model"
    return f"ft:{base_part}:{suffix or ''}:{job_id}"


def publish_adapter(storage: Storage, output: str, adapters_dir: Path, name: str, owner: str, job_id: str) -> Path:
    target = adapters_dir / name
    if target.exists():
        return target  # published already (the monitor restarted between publishing and recording it)
    staging = adapters_dir / f".staging-{job_id}"
    shutil.rmtree(staging, ignore_errors=True)
    # only the adapter, tokenizer and recorded config: the run's checkpoints and logs stay in the job folder
    storage.download_files(output, staging, lambda name: name.endswith(_SERVED))
    if not (staging / ADAPTER_CONFIG_NAME).is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise FileNotFoundError(f"the training run wrote no {ADAPTER_CONFIG_NAME} (not a LoRA adapter)")
    write_owner(staging, owner, job_id)
    staging.rename(target)
    return target


def unpublish(adapters_dir: Path, name: str) -> None:
    if name and "/" not in name and ".." not in name:
        shutil.rmtree(adapters_dir / name, ignore_errors=True)
