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


class _Router:
    """What the SSE path uses of the router: its admission gate and metrics."""

    def __init__(self):
        self.admission = Admission(1)
        self.observed = []
        self.metrics = type("M", (), {"observe": lambda _, record: self.observed.append(record.error_code)})()


def _job():
    from types import SimpleNamespace

    return SimpleNamespace(ref=SimpleNamespace(name="tiny"), n=1, prefix="", suffix="", citations=None, prompt_ids=[1, 2, 3], canned=None)


async def _events(closed: list):
    try:
        yield [TokenEvent(0, "你好", 2, "stop")]
    finally:
        closed.append(True)


def test_a_stream_the_client_never_read_gives_its_admission_slot_back():
    import gc

    from caregpt.serve.handlers import _sse
    from caregpt.serve.sse import ChatChunks

    async def go():
        router, closed = _Router(), []
        record = AccessRecord(request_id="r1", route="chat")
        router.admission.enter()
        events = _events(closed)
        await events.asend(None)  # the replica's stream is open: its first tokens are on the way
        response = _sse(router, events, ChatChunks(record, _job(), False), record)
        del response, events  # the client hung up before the body was sent: nothing ever iterates it
        gc.collect()
        await asyncio.sleep(0)
        router.admission.enter()  # the slot is free again (the limit is 1)
        await asyncio.sleep(0.01)
        return router, closed, record

    router, closed, record = asyncio.run(go())
    assert router.observed == ["client_disconnected"] and record.ended is not None  # logged once, as a hang-up
    assert closed == [True]  # the model's stream was closed, not left generating


def test_a_stream_read_to_the_end_leaves_once():
    from caregpt.serve.handlers import _sse
    from caregpt.serve.sse import ChatChunks

    async def go():
        router, closed = _Router(), []
        record = AccessRecord(request_id="r2", route="chat")
        router.admission.enter()
        response = _sse(router, _events(closed), ChatChunks(record, _job(), False), record)
        body = b"".join([part async for part in response.body_iterator])
        del response
        import gc

        gc.collect()
        return router, body

    router, body = asyncio.run(go())
    assert b"\xe4\xbd\xa0\xe5\xa5\xbd" in body and body.endswith(b"data: [DONE]\n\n")
    assert router.observed == [None] and router.admission.active == 0  # left once, not twice
