"""Shared fixtures: a real local Ray, a tiny model built from the test data, paths to data.

Nothing is mocked: tests run the real pipeline on a real Ray and a real (tiny) Llama model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Small trimmed samples of public data committed with the tests (sources and licences: tests/data/SOURCES.md),
# so a bare clone runs the suite; the larger data in ../shared/data is for benchmarks and examples only.
TEST_DATA = REPO / "tests" / "data"
TEST_REGISTRY = TEST_DATA / "dataset_info.json"
FULL_DATA = REPO.parent / "shared" / "data"
SAMPLE_DATA = REPO / "platform" / "caregpt" / "resources" / "sample_data"

os.environ.setdefault("CAREGPT_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train polls its workers every 2 s by default and each report() waits for a poll; a tiny test run is
# mostly that wait. Set before any Ray starts, so the local raylets and every CLI subprocess inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Serve as `caregpt serve` runs it: ingress replicas serve HTTP themselves too (direct ingress), beside Serve's proxy.
from caregpt.serve.ingress import prefer_direct_ingress  # noqa: E402

prefer_direct_ingress()


@pytest.fixture(scope="session")
def test_data() -> Path:
    """tests/data: the trimmed public samples (Toyhom, CMtMedQA, MedicalGPT, hospital guides) and our own exam."""
    return TEST_DATA


@pytest.fixture(scope="session")
def full_data() -> Path:
    """../shared/data, for the few quality evaluations whose frozen test split needs a whole public file (too large
    to commit); skipped, with the reason, in a clone without it."""
    if not FULL_DATA.is_dir():
        pytest.skip(f"needs the full public data beside the repository ({FULL_DATA}); tests/data holds only samples")
    return FULL_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, test_data) -> str:
    """A tiny Llama model + tokenizer trained on the sample pretraining text and SFT data."""
    from caregpt.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    corpus = [test_data / "pretrain_medicalgpt_fever.txt", test_data / "sft_toyhom_im_department.jsonl"]
    return str(build_tiny_model("tiny", corpus, out, seed=0))


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the session; more logical CPUs than cores so small actors co-schedule."""
    import ray

    from caregpt.runtime import ensure_ray

    ensure_ray(num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_local) -> str:
    """The session Ray's address: a command run as a subprocess joins it (RAY_ADDRESS), as a driver on a cluster
    node does, instead of starting a Ray of its own (~10 s each on 2 cores)."""
    return ray_local.get_runtime_context().gcs_address
