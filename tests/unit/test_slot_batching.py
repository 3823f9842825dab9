"""caregpt's slot continuous batching (caregpt.serve.slot_batching) against transformers' own generate()."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from caregpt.models.tiny import build_tiny_model
from caregpt.serve.engine import EngineError
from caregpt.serve.sampling import RowSampler, SamplingParams
from caregpt.serve.slot_batching import SlotBackend, SlotsUnsupported
from tests.conftest import TEST_DATA

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model("tiny", [TEST_DATA / "pretrain_medicalgpt_fever.txt"], tmp_path_factory.mktemp("slots") / "tiny", seed=0)


@pytest.fixture(scope="module")
def model(tiny):
    return AutoModelForCausalLM.from_pretrained(tiny).eval()


def _reference(model, prompt: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


async def _collect(backend, name, prompt, n, *, delay=0.0, params=None, eos=()):
    await asyncio.sleep(delay)
    tokens = []
    async for new, done in backend.stream(name, prompt, RowSampler(params or SamplingParams(max_tokens=n, temperature=0)), n, list(eos)):
        tokens += new
    assert done
    return tokens


def test_concurrent_rows_decode_exactly_like_generate(model):
    """Rows of different lengths join at different steps, a long prompt is prefilled in chunks, short answers
    finish early (their rows are refilled by moving the last row): every answer equals generate()'s."""
    backend = SlotBackend(model, max_batch_size=4, max_model_len=256, prefill_chunk_tokens=8)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, model.config.vocab_size, (n,), generator=gen).tolist() for n in (5, 30, 2, 17, 9, 40)]
    lengths = [12, 20, 3, 25, 7, 10]  # six requests, four rows: the last two wait for a free row
    try:
        async def main():
            return await asyncio.gather(*(_collect(backend, f"r{i}", p, n, delay=0.01 * i) for i, (p, n) in enumerate(zip(prompts, lengths))))

        answers = asyncio.run(main())
        for prompt, n, answer in zip(prompts, lengths, answers):
            assert answer == _reference(model, prompt, n)
        assert backend._running == [] and backend._prefilling is None
    finally:
        backend.shutdown()


def test_a_seed_gives_the_same_sample_alone_or_in_a_batch(model):
    backend = SlotBackend(model, max_batch_size=4, max_model_len=128)
    seeded = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    prompt = [5, 9, 13, 17]
    try:
        alone = asyncio.run(_collect(backend, "alone", prompt, 16, params=seeded))

        async def crowded():
            others = [_collect(backend, f"o{i}", [7 + i] * (3 + i), 16, params=SamplingParams(max_tokens=16, temperature=1.0)) for i in range(3)]
            return (await asyncio.gather(_collect(backend, "seeded", prompt, 16, params=seeded), *others))[0]

        assert asyncio.run(crowded()) == alone
        assert alone != _reference(model, prompt, 16)  # it did sample
    finally:
        backend.shutdown()


def test_eos_ends_a_row_and_a_closed_stream_frees_its_row(model):
    backend = SlotBackend(model, max_batch_size=2, max_model_len=128)
    prompt = [4, 8, 15, 16, 23, 42]
    greedy = _reference(model, prompt, 10)
    try:
        async def main():
            stopped = await _collect(backend, "eos", prompt, 10, eos=[greedy[3]])
            stream = backend.stream("gone", prompt, RowSampler(SamplingParams(max_tokens=100, temperature=0)), 100, [])
            await stream.__anext__()
            await stream.aclose()  # the client hung up
            for _ in range(100):
                if not backend._running:
                    break
                await asyncio.sleep(0.01)
            assert backend._running == []
            return stopped, await _collect(backend, "after", prompt, 10)

        stopped, after = asyncio.run(main())
        assert stopped == greedy[: greedy.index(greedy[3]) + 1]  # ends on (and includes) the end token
        assert after == greedy
    finally:
        backend.shutdown()


def test_a_request_longer_than_the_engine_allows_is_refused(model):
    backend = SlotBackend(model, max_batch_size=2, max_model_len=32)
    try:
        with pytest.raises(EngineError, match="max_model_len 32"):
            asyncio.run(_collect(backend, "long", list(range(3, 30)), 8))
    finally:
        backend.shutdown()


def test_sliding_window_models_fall_back_to_the_paged_backend(tiny, caplog):
    from transformers import AutoTokenizer

    from caregpt.serve.hf_engine import TransformersEngine

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=128, sliding_window=8)
    mistral = MistralForCausalLM(config).eval()
    with pytest.raises(SlotsUnsupported, match="sliding-window"):
        SlotBackend(mistral, max_batch_size=2, max_model_len=64)
    with caplog.at_level(logging.WARNING, logger="caregpt.serve.hf_engine"):
        engine = TransformersEngine(mistral, tokenizer, max_batch_size=2, max_model_len=64)
    try:
        assert engine.batching == "paged"
        assert "sliding-window" in caplog.text
    finally:
        engine.shutdown()


def test_a_model_that_slots_would_decode_wrongly_is_refused(monkeypatch):
    """The start-up check compares slot decoding with a plain forward pass; a cache that drops the keys fails it."""
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128)
    llama = LlamaForCausalLM(config).eval()
    SlotBackend(llama, max_batch_size=2, max_model_len=64).shutdown()  # the real cache passes

    from caregpt.serve import slot_batching

    original = slot_batching.SlotCache.update

    def forgetful(self, keys, values, layer_idx, *args, **kwargs):
        k, v = original(self, keys, values, layer_idx, *args, **kwargs)
        return torch.zeros_like(k), v  # keys lost: attention no longer depends on the sequence

    monkeypatch.setattr(slot_batching.SlotCache, "update", forgetful)
    with pytest.raises(SlotsUnsupported, match="differs from a plain forward pass"):
        SlotBackend(llama, max_batch_size=2, max_model_len=64)



def test_kv_cache_tokens_is_refused_unless_the_cache_is_paged():
    from pydantic import ValidationError

    from caregpt.serve.config import ServeConfig

    with pytest.raises(ValidationError, match="kv_cache_tokens sizes the paged KV cache: set batching: paged"):
        ServeConfig(model_name_or_path="m", kv_cache_tokens=4096)
    assert ServeConfig(model_name_or_path="m", batching="paged", kv_cache_tokens=4096).kv_cache_tokens == 4096
    assert ServeConfig(model_name_or_path="m").batching == "slots"


def test_shutting_down_fails_the_requests_still_running(model):
    """An evicted adapter's engine is shut down while a request may still stream from it: it gets an error, not silence."""
    backend = SlotBackend(model, max_batch_size=2, max_model_len=256)

    async def main():
        stream = backend.stream("long", [5, 6, 7], RowSampler(SamplingParams(max_tokens=200, temperature=0)), 200, [])
        await stream.__anext__()
        await asyncio.to_thread(backend.shutdown)
        with pytest.raises(EngineError, match="shut down"):
            async for _ in stream:
                pass
        with pytest.raises(EngineError, match="shut down"):
            await _collect(backend, "late", [5, 6], 4)

    asyncio.run(asyncio.wait_for(main(), 30))
