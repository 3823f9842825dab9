"""Unit tests run without Ray: `make test-fast` stays quick and needs no cluster. Tests that need a real
Ray belong in tests/ray or tests/e2e (they use the session's `ray_local` fixture)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True, scope="session")
def _no_ray_cluster_in_unit_tests():
    def running() -> bool:
        ray = sys.modules.get("ray")  # importing ray (for its schemas) is fine; starting it is not
        return ray is not None and ray.is_initialized()

    # in a whole-suite run the Ray tests' session cluster may already be up: only a Ray the unit tests started counts
    before = running()
    yield
    if not before and running():
        pytest.fail("a unit test started Ray: move it to tests/ray or tests/e2e")
