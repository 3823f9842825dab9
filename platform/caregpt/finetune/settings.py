"""Settings of the fine-tuning service: the `finetune:` block of the serve settings.

    finetune:
      storage_root: /data/caregpt-ft        # or s3://bucket/caregpt-ft (any pyarrow filesystem URI)
      state_dir: /var/lib/caregpt-ft        # SQLite state; default <storage_root>/state for a local root
      deidentify: true                      # mask personal identifiers in uploads and feedback

Unset (the default), the Files, fine-tuning and feedback routes are not mounted at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FinetuneSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    storage_root: str
    """Where uploaded files and job outputs live: a local folder or a pyarrow filesystem URI (s3://, gs://, hdfs://)."""

    state_dir: str | None = None
    """Local folder of the SQLite state (files, jobs, events, feedback). Default: <storage_root>/state for a local root; required for a URI root."""

    deidentify: bool = False
    """Mask personal identifiers (names, ID numbers, phones, ...) in uploaded files and feedback before they are stored."""

    max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest uploaded file in bytes; larger uploads get 413."""

    max_files_per_key: int = Field(default=1000, ge=1)
    """Files one API key may keep at once."""

    max_feedback_per_key: int = Field(default=100_000, ge=1)
    """Ratings one API key may store (POST /v1/feedback answers 429 beyond it)."""

    max_active_jobs_per_key: int = Field(default=4, ge=1)
    """Jobs one API key may have waiting or running at once."""

    max_running_jobs: int = Field(default=1, ge=1)
    """Jobs this app runs at once on the cluster; more wait in `queued`."""

    job_num_cpus: float = Field(default=1.0, gt=0)
    """CPUs one training worker reserves (a job waits in `queued` until the cluster has them free)."""

    job_num_gpus: float = Field(default=0.0, ge=0)
    """GPUs one training worker reserves (0: train on CPU)."""

    job_api_address: str | None = None
    """Ray job API (dashboard) address, e.g. http://head:8265. Default: the cluster this app runs on."""

    base_learning_rate: float = Field(default=2e-4, gt=0)
    """Learning rate that learning_rate_multiplier scales (LoRA)."""

    default_n_epochs: int = Field(default=3, ge=1)
    """Epochs when a job sets none (or "auto")."""

    default_batch_size: int = Field(default=4, ge=1)
    """per_device_train_batch_size when a job sets none (or "auto")."""

    max_n_epochs: int = Field(default=50, ge=1)
    """Largest n_epochs a job may ask for."""

    cutoff_len: int = Field(default=1024, ge=16)
    """Longest training example in tokens; a longer one fails the job at validation with its line."""

    lora_rank: int = Field(default=8, ge=1)
    """LoRA rank of fine-tuned adapters."""

    lora_target: str = "all"
    """Modules LoRA adapts (comma separated, or all)."""

    poll_interval_s: float = Field(default=2.0, gt=0)
    """How often the job monitor checks the cluster for progress."""

    extra_train_args: dict[str, Any] = {}
    """Further `caregpt train` keys every job gets (e.g. {"logging_steps": 1}); job hyperparameters win over them."""

    @model_validator(mode="after")
    def _state_is_local(self) -> FinetuneSettings:
        # made absolute here, on the driver: replicas and Ray jobs may run in another working directory
        if "://" not in self.storage_root:
            object.__setattr__(self, "storage_root", str(Path(self.storage_root).expanduser().resolve()))
        if self.state_dir is not None:
            object.__setattr__(self, "state_dir", str(Path(self.state_dir).expanduser().resolve()))
        if self.state_dir is None and "://" in self.storage_root:
            raise ValueError("state_dir is required when storage_root is a URI (SQLite needs a local folder)")
        return self

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir or Path(self.storage_root) / "state").expanduser().resolve()


def parse_finetune(value: Any) -> Any:
    """A flag carries JSON (--finetune '{"storage_root": "/data/ft"}') or a bare storage root path."""
    if isinstance(value, str):
        text = value.strip()
        return json.loads(text) if text.startswith("{") else {"storage_root": text}
    return value
