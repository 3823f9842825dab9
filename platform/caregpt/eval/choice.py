"""Multiple-choice exam accuracy: option-letter likelihood, or generate-then-parse.

Likelihood (the default, as in C-Eval / CMMLU / LLaMA-Factory's evaluator): the question goes through
the model's chat template ending in "答案：" and the generation prompt; one forward pass gives the
next-token log-probabilities of the option letters, and the most likely letter is the answer.
Multi-answer items are those the *exam* declares as such (a question-type field such as "type": "多选题" /
"multiple", or 多选 / 多项选择 / "select all" in the question): they take every letter whose probability,
renormalised over the item's own option letters, is at least 1/number-of-options (better than uniform); the top
letter is always taken. The gold answer never decides how many letters are picked (that would leak the
answer); an undeclared item whose gold has several letters is answered with one letter and scored wrong.
An item is right only if the chosen set equals the gold set.

`summarize` puts every accuracy next to two baselines: chance (a uniform guess: 1/options for a single-answer
item, 1/(2^options - 1) for a declared multi-answer one) and the majority letter (always answering the letter
that is most often right in this very set, the best constant answer); it also reports how often the model gave
its most frequent answer, so a model that answers "A" to everything is visible.

Generate-then-parse: greedy generation from the same prompt (the one batched generation path,
:func:`caregpt.models.generate.generate_batch`), then
:func:`caregpt.eval.choice_parse.extract_choice`; replies it cannot read are "unparsed" (scored wrong,
their ids reported).

This first version runs batched forward passes in one process (one GPU or the CPU): a 2k-question exam
takes seconds to minutes. Corpus-scale generation belongs to Ray Data batch prediction.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from caregpt.config.loader import ConfigError
from caregpt.eval.choice_data import ChoiceItem, build_messages, choose_shots
from caregpt.eval.choice_parse import extract_choice

logger = logging.getLogger("caregpt.eval.choice")

METHODS = ("likelihood", "generate")


@dataclass
class ChoiceSettings:
    method: str = "likelihood"
    n_shot: int = 0
    batch_size: int = 8
    max_new_tokens: int = 32
    cutoff_len: int | None = None  # default: the model's max positions


# ---- model -------------------------------------------------------------------------------------

def checkpoint_defaults(checkpoint_dir: list[str] | None) -> dict[str, Any]:
    """model_name_or_path / template recorded beside the last adapter by `caregpt train`, if any."""
    from caregpt.models.inference import recorded_settings

    return recorded_settings(checkpoint_dir or [])


def load_eval_model(model_name_or_path: str, checkpoint_dir: list[str] | None = None, *, template: str = "default",
                    trust_remote_code: bool = False, device: str | None = None):
    """(model in eval mode, tokenizer, bound chat template) for scoring, from the one inference loader."""
    from caregpt.models.inference import InferenceSpec, load_for_inference

    loaded = load_for_inference(InferenceSpec(model_name_or_path, tuple(checkpoint_dir or ()), template=template,
                                              trust_remote_code=trust_remote_code, device=device))
    return loaded.model, loaded.tokenizer, loaded.template


# ---- prompts -----------------------------------------------------------------------------------

def answer_tokens(template, tokenizer, letters: str) -> tuple[list[int], dict[str, int]]:
    """(ids every answer starts with, letter -> the id that tells the letters apart).

    The answer segment is tokenized the way training saw it (the template's assistant segment), so a
    template that writes " {assistant}" compares " A" / " B" tokens, and a tokenizer that emits a
    shared lead token (e.g. a lone "▁") compares the token after it.
    """
    from caregpt.data.templates import IGNORE_INDEX

    probe = [{"role": "user", "content": "?"}]
    seqs = {}
    for letter in letters:
        encoded = template.encode(tokenizer, probe + [{"role": "assistant", "content": letter}])
        seqs[letter] = [t for t, lab in zip(encoded.input_ids, encoded.labels) if lab != IGNORE_INDEX]
    first = next(iter(seqs.values()))
    common = 0
    while all(len(s) > common + 1 and s[common] == first[common] for s in seqs.values()):
        common += 1
    ids = {letter: s[common] for letter, s in seqs.items()}
    if len(set(ids.values())) != len(ids):
        raise ConfigError(f"the tokenizer does not give the option letters {letters} distinct answer tokens under "
                          f"template {template.name!r}; use --method generate")
    return first[:common], ids


def build_prompts(items: list[ChoiceItem], pool: list[ChoiceItem], n_shot: int, template, tokenizer,
                  suffix: list[int], max_len: int | None) -> list[tuple[list[int], int, bool]]:
    """(prompt ids, shots used, truncated) per item. Too long: drop shots first, then cut from the left."""
    out = []
    for item in items:
        shots = choose_shots(item, pool, n_shot)
        while True:
            ids = template.encode_prompt(tokenizer, build_messages(item, shots)) + suffix
            if max_len is None or len(ids) <= max_len or not shots:
                break
            shots = shots[:-1]
        truncated = max_len is not None and len(ids) > max_len
        out.append((ids[-max_len:] if truncated else ids, len(shots), truncated))
    return out


def _batches(lengths: list[int], size: int) -> list[list[int]]:
    # longest first: similar lengths share a batch (little padding) and memory peaks show at once
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + size] for i in range(0, len(order), size)]


# ---- scoring -----------------------------------------------------------------------------------

_MULTI_TYPE = re.compile(r"多选|多项|不定项|multiple|multi|select all|choose all|all that apply", re.IGNORECASE)
_TYPE_KEYS = ("type", "question_type", "qtype", "item_type")


def declared_multi(item: ChoiceItem) -> bool:
    """Does the exam itself say the item may have several right letters? Never looks at the gold answer."""
    for key in _TYPE_KEYS:
        value = item.extra.get(key)
        if isinstance(value, str) and _MULTI_TYPE.search(value):
            return True
    return bool(_MULTI_TYPE.search(item.question))


def _pick(item: ChoiceItem, probs: dict[str, float]) -> str:
    """The documented choice rule: argmax; for declared multi-answer items every letter at least as likely as uniform."""
    top = max(sorted(probs), key=lambda k: probs[k])  # sorted first: ties go to the earlier letter
    if not declared_multi(item):
        return top
    floor = 1.0 / len(probs)
    return "".join(sorted({top, *(k for k, p in probs.items() if p >= floor)}))


def likelihood_predictions(model, tokenizer, items, prompts, letter_ids: dict[str, int], batch_size: int,
                           progress: Callable | None = None) -> list[dict]:
    import torch

    from caregpt.models.generate import left_pad
    from caregpt.models.inference import default_pad_id

    results: list[dict | None] = [None] * len(items)
    device = next(model.parameters()).device
    pad = default_pad_id(tokenizer, [])
    for batch in _batches([len(p[0]) for p in prompts], batch_size):
        ids, mask = left_pad([prompts[i][0] for i in batch], pad, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
        with torch.inference_mode():
            try:
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[:, -1]
            except TypeError:  # a model class without logits_to_keep
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for row, index in enumerate(batch):
            item = items[index]
            lp = {k: float(logprobs[row, letter_ids[k]]) for k in item.options}
            norm = torch.softmax(torch.tensor(list(lp.values())), dim=0).tolist()
            probs = dict(zip(lp, norm))
            results[index] = {"predicted": _pick(item, probs), "letter_logprobs": {k: round(v, 6) for k, v in lp.items()}}
        if progress:
            progress(len(batch))
    return results  # type: ignore[return-value]


def generate_predictions(model, tokenizer, template, items, prompts, batch_size: int, max_new_tokens: int,
                         progress: Callable | None = None) -> list[dict]:
    """Greedy answers from the one batched generation path, read with extract_choice."""
    from caregpt.models.generate import GenerationSettings, generate_batch

    results: list[dict | None] = [None] * len(items)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    for batch in _batches([len(p[0]) for p in prompts], batch_size):
        answers = generate_batch(model, tokenizer, [prompts[i][0] for i in batch], settings, stop_strings=template.stop_strings)
        for index, answer in zip(batch, answers):
            results[index] = {"predicted": extract_choice(answer.text, items[index].options), "output": answer.text}
        if progress:
            progress(len(batch))
    return results  # type: ignore[return-value]


def score_items(model, tokenizer, template, items: list[ChoiceItem], pool: list[ChoiceItem], settings: ChoiceSettings,
                progress: Callable | None = None) -> list[dict]:
    """One prediction row per item, in item order: id, subject, answer, predicted, parsed, correct, ..."""
    from caregpt.models.inference import max_positions

    if settings.method not in METHODS:
        raise ConfigError(f"method={settings.method!r}; use one of {', '.join(METHODS)}")
    limits = [x for x in (max_positions(model), settings.cutoff_len) if x]
    max_len = min(limits) if limits else None
    if settings.method == "likelihood":
        suffix, letter_ids = answer_tokens(template, tokenizer, "".join(sorted({k for i in items for k in i.options})))
        prompts = build_prompts(items, pool, settings.n_shot, template, tokenizer, suffix, max_len)
        found = likelihood_predictions(model, tokenizer, items, prompts, letter_ids, settings.batch_size, progress)
    else:
        room = None if max_len is None else max(1, max_len - settings.max_new_tokens)
        prompts = build_prompts(items, pool, settings.n_shot, template, tokenizer, [], room)
        found = generate_predictions(model, tokenizer, template, items, prompts, settings.batch_size,
                                     settings.max_new_tokens, progress)
    rows = []
    for item, (_, shots, truncated), extra in zip(items, prompts, found):
        predicted = extra.pop("predicted")
        rows.append({"id": item.id, "subject": item.subject, "answer": item.answer, "predicted": predicted,
                     "parsed": predicted is not None, "correct": predicted == item.answer,
                     "options": len(item.options), "declared_multi": declared_multi(item),
                     "shots": shots, "truncated": truncated, **extra})
    return rows


def baselines(rows: list[dict]) -> dict[str, Any]:
    """Chance and majority-letter accuracy (percent) for these items, and how concentrated the model's answers are."""
    if not rows:
        return {"chance_accuracy": 0.0, "majority_letter": "", "majority_letter_accuracy": 0.0,
                "most_common_prediction": "", "most_common_prediction_share": 0.0}
    chance = 0.0
    for row in rows:
        n = max(int(row.get("options") or len(row["answer"]) or 1), 1)
        chance += 1.0 / (2 ** n - 1) if row.get("declared_multi") else 1.0 / n
    gold = Counter(row["answer"] for row in rows)
    letter, hits = max(sorted(gold.items()), key=lambda item: item[1])
    predicted = Counter(row["predicted"] for row in rows if row["predicted"])
    top_prediction, top_count = max(sorted(predicted.items()), key=lambda item: item[1]) if predicted else ("", 0)
    return {"chance_accuracy": round(100.0 * chance / len(rows), 4), "majority_letter": letter,
            "majority_letter_accuracy": round(100.0 * hits / len(rows), 4),
            "most_common_prediction": top_prediction,
            "most_common_prediction_share": round(100.0 * top_count / len(rows), 4)}


def format_accuracy(summary: dict[str, Any]) -> str:
    """One line: accuracy beside its baselines, e.g. for a demo's exam step."""
    line = (f"exam accuracy {summary['accuracy']:.1f}% ({summary['correct']}/{summary['total']}); chance "
            f"{summary['chance_accuracy']:.1f}%, always '{summary['majority_letter']}' {summary['majority_letter_accuracy']:.1f}%")
    if summary.get("most_common_prediction_share", 0) >= 90:
        line += f"; the model answered '{summary['most_common_prediction']}' on {summary['most_common_prediction_share']:.0f}% of items"
    return line


def summarize(rows: list[dict]) -> dict[str, Any]:
    """Overall and per-subject accuracy (percent, 4 decimals), counts, and the ids that could not be parsed."""
    def block(part: list[dict]) -> dict[str, Any]:
        correct = sum(1 for r in part if r["correct"])
        return {"accuracy": round(100.0 * correct / len(part), 4) if part else 0.0, "correct": correct,
                "total": len(part), "unparsed": sum(1 for r in part if not r["parsed"])}

    subjects: dict[str, list[dict]] = {}
    for row in rows:
        subjects.setdefault(row["subject"], []).append(row)
    return {
        **block(rows),
        **baselines(rows),
        "subjects": {name: block(part) for name, part in sorted(subjects.items())},
        "unparsed_ids": [r["id"] for r in rows if not r["parsed"]],
        "multi_answer_items": sum(1 for r in rows if len(r["answer"]) > 1),
        "truncated_prompts": sum(1 for r in rows if r["truncated"]),
    }
