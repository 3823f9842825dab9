"""Shared fixtures: a real local Ray, a tiny model built from the shared data, paths to data.

Nothing is mocked: tests run the real pipeline on a real Ray and a real (tiny) Llama model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_DATA = REPO / "platform" / "caregpt" / "resources" / "sample_data"
SHARED_REGISTRY = REPO / "examples" / "registries" / "shared_data.json"

os.environ.setdefault("CAREGPT_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared data folder is missing: {SHARED_DATA} (tests expect ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, shared_data) -> str:
    """A tiny Llama model + tokenizer trained on the shared pretraining text and SFT data."""
    from caregpt.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    corpus = [shared_data / "pretrain_medicalgpt_fever.txt", shared_data / "sft_toyhom_im_department.jsonl"]
    return str(build_tiny_model("tiny", corpus, out, seed=0))


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the session; more logical CPUs than cores so small actors co-schedule."""
    import ray

    from caregpt.runtime import ensure_ray

    ensure_ray(num_cpus=4)
    yield ray
    ray.shutdown()
