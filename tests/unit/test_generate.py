"""The one batched generation path (caregpt.models.generate) on the tiny model."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from caregpt.models.generate import GenerationSettings, generate_batch, left_pad
from caregpt.models.inference import InferenceSpec, load_for_inference

QUESTIONS = ["发烧怎么办", "孩子咳嗽三天了，晚上更厉害，需要去医院吗？", "头痛", "高血压患者平时饮食要注意什么？有哪些禁忌？"]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    """The tiny model with larger random weights: its untrained greedy answers differ from prompt to prompt
    (at the built-in init every prompt gets the same repeated token, which would make batched == alone trivial)."""
    loaded = load_for_inference(InferenceSpec(tiny_model, template="chatml", device="cpu"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in loaded.model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
    return loaded


@pytest.fixture(scope="module")
def prompts(loaded) -> list[list[int]]:
    return [loaded.template.encode_prompt(loaded.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


def _alone(loaded, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The reference: one prompt, no padding, plain greedy generate, cut before the first stop id."""
    with torch.no_grad():
        out = loaded.model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=loaded.stop_ids, pad_token_id=loaded.pad_id)
    new = out[0, len(prompt):].tolist()
    return new[: next((i for i, t in enumerate(new) if t in loaded.stop_ids), len(new))]


def test_greedy_batch_equals_each_prompt_alone_despite_left_padding(loaded, prompts):
    assert len({len(p) for p in prompts}) == len(prompts)  # every row is padded differently
    answers = generate_batch(loaded.model, loaded.tokenizer, prompts, GenerationSettings(max_new_tokens=12),
                             stop_strings=loaded.template.stop_strings)
    alone = [_alone(loaded, p, 12) for p in prompts]
    assert [a.ids for a in answers] == alone
    assert len({tuple(ids) for ids in alone}) == len(prompts)  # distinct answers: a mix-up between rows would show
    for answer in answers:
        assert answer.text == loaded.tokenizer.decode(answer.ids, skip_special_tokens=True).strip() and answer.text
    # the same prompts in another order and batch split give the same answers
    again = generate_batch(loaded.model, loaded.tokenizer, prompts[::-1][:2], GenerationSettings(max_new_tokens=12),
                           stop_strings=loaded.template.stop_strings)
    assert [a.ids for a in again] == alone[::-1][:2]


def test_max_new_tokens_is_honoured(loaded, prompts):
    for limit in (1, 5, 17):
        answers = generate_batch(loaded.model, loaded.tokenizer, prompts, GenerationSettings(max_new_tokens=limit),
                                 stop_strings=loaded.template.stop_strings)
        for answer, prompt in zip(answers, prompts):
            assert answer.ids == _alone(loaded, prompt, limit)
            assert len(answer.ids) == limit and not answer.stopped  # no stop in these answers: the limit ends them
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        GenerationSettings(max_new_tokens=0)


def _multi_token_stop(loaded, ids: list[int]) -> str:
    """A piece of the answer's text, from its 4th token on, that tokenizes to several tokens."""
    tok = loaded.tokenizer
    for start in range(3, len(ids) - 2):
        piece = tok.decode(ids[start:start + 2], skip_special_tokens=True)
        full = tok.decode(ids, skip_special_tokens=True)
        if "\ufffd" not in piece and len(tok.encode(piece, add_special_tokens=False)) > 1 and full.find(piece) > 0:
            return piece
    raise AssertionError(f"no multi-token piece in {ids}")


def test_stop_strings_cut_the_answer_and_end_that_row_early(loaded, prompts):
    reference = [_alone(loaded, p, 24) for p in prompts]
    full = loaded.tokenizer.decode(reference[1], skip_special_tokens=True)
    stop = _multi_token_stop(loaded, reference[1])
    answers = generate_batch(loaded.model, loaded.tokenizer, prompts, GenerationSettings(max_new_tokens=24),
                             stop_strings=[*loaded.template.stop_strings, stop])
    hit = answers[1]
    assert hit.stopped and hit.text == full[: full.find(stop)].strip()
    # generation stopped on the string: its ids are a prefix of the full answer, without the batch's padding
    assert len(hit.ids) < 24 and hit.ids == reference[1][: len(hit.ids)] and loaded.pad_id not in hit.ids
    for i in (0, 2, 3):  # the other rows run on, unless the same text happens to come up in them
        assert answers[i].ids == reference[i] or stop in loaded.tokenizer.decode(reference[i])


def test_a_single_token_stop_ends_the_answer_before_it(loaded, prompts):
    reference = _alone(loaded, prompts[2], 16)
    token = reference[5]
    stop_text = loaded.tokenizer.decode([token])
    assert loaded.tokenizer.encode(stop_text, add_special_tokens=False) == [token]
    [answer] = generate_batch(loaded.model, loaded.tokenizer, [prompts[2]], GenerationSettings(max_new_tokens=16),
                              stop_strings=[stop_text])
    assert answer.stopped and answer.ids == reference[: reference.index(token)]
    assert stop_text not in answer.text


def test_sampling_settings_are_honoured(loaded, prompts):
    greedy = generate_batch(loaded.model, loaded.tokenizer, prompts, GenerationSettings(max_new_tokens=10))
    # top_k=1 keeps only the most likely token: sampling then is greedy decoding
    top1 = generate_batch(loaded.model, loaded.tokenizer, prompts, GenerationSettings(max_new_tokens=10, do_sample=True, top_k=1))
    assert [a.ids for a in top1] == [a.ids for a in greedy]

    def sampled(seed: int):
        torch.manual_seed(seed)
        settings = GenerationSettings(max_new_tokens=10, do_sample=True, temperature=1.5, top_k=0, top_p=1.0)
        return [a.ids for a in generate_batch(loaded.model, loaded.tokenizer, prompts, settings)]

    assert sampled(3) == sampled(3) and sampled(3) != [a.ids for a in greedy]
    # a huge repetition penalty forbids every token already in the prompt or the answer
    penalised = generate_batch(loaded.model, loaded.tokenizer, prompts, GenerationSettings(max_new_tokens=10, repetition_penalty=1e4))
    for answer, prompt in zip(penalised, prompts):
        assert len(set(answer.ids)) == len(answer.ids) and not set(answer.ids) & set(prompt)
    assert any(len(set(a.ids)) < len(a.ids) or set(a.ids) & set(p) for a, p in zip(greedy, prompts))  # greedy repeats


def test_left_pad_and_bad_prompts():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match=r"prompts \[1\] are empty"):
        left_pad([[5], []], pad_id=0)
    with pytest.raises(ValueError, match=r"stop_ids=\[\]"):
        generate_batch(object(), SimpleNamespace(eos_token_id=None, encode=lambda *a, **k: []), [[5]], stop_ids=[])
    assert GenerationSettings().hf_kwargs() == {"max_new_tokens": 512, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def test_model_generate_is_called_only_by_the_one_generation_path():
    """`grep '\\.generate(' platform/caregpt`: transformers' generate runs in models/generate.py only.

    Serving engines stream through their own token loop (``engine.generate`` is the Engine protocol, not
    transformers'); the PPO rollout samples from the policy being trained and needs the raw sequence tensor.
    """
    root = Path(__file__).resolve().parents[2] / "platform" / "caregpt"
    allowed = {root / "models" / "generate.py", root / "train" / "ppo.py"}
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and func.attr == "generate" and path not in allowed:
                receiver = ast.unparse(func.value)
                if "engine" not in receiver.lower() and receiver != "server":
                    found.append(f"{path.relative_to(root)}:{node.lineno} {receiver}.generate")
    assert found == []


def test_the_serving_engine_answers_what_the_batch_path_answers(loaded, prompts):
    """Greedy, same stops: the streaming engine (its own token loop) and generate_batch give the same text."""
    import asyncio

    from caregpt.serve.engine import GenerationRequest
    from caregpt.serve.hf_engine import TransformersEngine
    from caregpt.serve.sampling import SamplingParams

    reference = _alone(loaded, prompts[1], 24)
    stop = _multi_token_stop(loaded, reference)
    stops = (*loaded.template.stop_strings, stop)
    batch = generate_batch(loaded.model, loaded.tokenizer, prompts, GenerationSettings(max_new_tokens=24), stop_strings=stops)
    engine = TransformersEngine(loaded.model, loaded.tokenizer, template_stops=stops, max_batch_size=4)
    assert engine.stop_ids == loaded.stop_ids and stop in engine.text_stops  # one stop rule

    async def stream(i: int, prompt: list[int]) -> str:
        request = GenerationRequest(f"r{i}", prompt, SamplingParams(max_tokens=24, temperature=0))
        return "".join([out.text async for out in engine.generate(request)])

    async def all_of_them() -> list[str]:
        return await asyncio.gather(*(stream(i, p) for i, p in enumerate(prompts)))

    try:
        streamed = asyncio.run(all_of_them())
    finally:
        engine.shutdown()
    assert [s.strip() for s in streamed] == [a.text for a in batch]
    assert batch[1].stopped and stop not in streamed[1]
