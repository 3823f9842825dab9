"""Request caps, the cheap context bound, admission, typed events and log hygiene (no Ray, no model)."""

from __future__ import annotations

import asyncio
import json

import pytest

from caregpt.serve.auth import check_key
from caregpt.serve.errors import APIError
from caregpt.serve.events import TokenEvent, merge
from caregpt.serve.limits import Admission, FairShare, check_counts, check_text_size
from caregpt.serve.observability import AccessRecord


def test_caps_name_the_field_and_the_setting():
    caps = dict(max_n=4, max_prompts=16, max_total_tokens=2048)
    check_counts(4, 16, 32, **caps)  # 2,048: at the cap is fine
    for args, param, setting in (((5, 1, 1), "n", "max_n"), ((1, 17, 1), "prompt", "max_prompts"), ((4, 16, 33), "max_tokens", "max_total_tokens")):
        with pytest.raises(APIError) as err:
            check_counts(*args, **caps)
        assert err.value.status == 400 and err.value.param == param and setting in err.value.message


def test_cheap_context_bound():
    check_text_size(512 * 16, 512, 16, "messages")
    with pytest.raises(APIError) as err:
        check_text_size(512 * 16 + 1, 512, 16, "messages")
    assert err.value.code == "context_length_exceeded" and err.value.param == "messages"


def test_admission_answers_503_at_once_beyond_the_limit():
    gate = Admission(2)
    gate.enter()
    gate.enter()
    with pytest.raises(APIError) as err:
        gate.enter()
    assert err.value.status == 503 and err.value.headers["Retry-After"] == "1"
    gate.leave()
    gate.enter()  # room again


def test_fair_share_bounds_the_sequences_of_one_request():
    async def go():
        share, running, peak = FairShare(8, n=2), 0, 0

        async def job():
            nonlocal running, peak
            async with share.turn():
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.01)
                running -= 1

        await asyncio.gather(*(job() for _ in range(16)))
        return peak

    assert asyncio.run(go()) == 4  # 8 sequences / n=2 -> 4 prompts at a time


def test_events_merge_per_choice():
    batch = [TokenEvent(1, "b", 1), TokenEvent(0, "a", 1), TokenEvent(0, "c", 2, "stop")]
    assert merge(batch) == {0: ("ac", "stop"), 1: ("b", None)}


def test_keys_are_checked():
    assert check_key("", []) is None
    assert check_key("Bearer k1", ["k0", "k1"]) == "k1"
    for header in ("", "Bearer", "Basic k1", "Bearer k2", "Bearer \udcff"):
        with pytest.raises(APIError) as err:
            check_key(header, ["k1"])
        assert err.value.status == 401


def test_access_log_fields_are_clipped_and_never_the_requested_model():
    record = AccessRecord(request_id="r" * 500, route="chat", client="c" * 300)
    entry = record.as_log()
    assert entry["model"] == "unknown" and len(entry["request_id"]) <= 67 and len(entry["client"]) <= 67
    record.model, record.error_code = "tiny\u2028\ud800", "x" * 1000
    line = json.dumps(record.as_log(), ensure_ascii=False)
    assert len(line) < 1000 and "\ud800" not in line
