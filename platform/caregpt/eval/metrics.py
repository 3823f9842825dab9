"""BLEU-4 and ROUGE-1/2/L for Chinese generation, scored the way CareGPT / LLaMA-Factory score them.

Per example: ROUGE F values from ``rouge_chinese.Rouge`` on jieba words joined by spaces, and
sentence BLEU-4 on *characters* (NLTK, smoothing method3). Each value is x100 and rounded to 4
decimals, then the four are averaged over examples. Keeping exactly this recipe (the same
segmentation, the same smoothing, the same per-example rounding) is what makes our numbers
comparable with CareGPT's published runs; do not "improve" it.

One deliberate difference: where the original crashes (``Rouge`` raises on an empty hypothesis or
reference), an empty prediction or reference scores 0 for ROUGE. BLEU of an empty prediction is
already 0 in NLTK.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

METRIC_KEYS: tuple[str, ...] = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")
_ROUGE_KEYS = ("rouge-1", "rouge-2", "rouge-l")


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    # jieba logs "Building prefix dict ... Loading model cost ..." at DEBUG/INFO on first use;
    # its dictionary ships inside the package, so nothing is downloaded.
    jieba.setLogLevel(logging.WARNING)
    return jieba


def segment(text: str) -> str:
    """jieba words joined by single spaces (whitespace-only tokens dropped)."""
    return " ".join(word for word in _jieba().cut(text) if word.strip())


def _rouge_f(hypothesis: str, reference: str) -> dict[str, float]:
    from rouge_chinese import Rouge

    if not hypothesis.split() or not reference.split():
        return {key: 0.0 for key in _ROUGE_KEYS}  # Rouge raises "Hypothesis is empty." here
    scores = Rouge().get_scores(hypothesis, reference)[0]
    return {key: scores[key]["f"] for key in _ROUGE_KEYS}


def _bleu4(prediction: str, reference: str) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if not prediction or not reference:
        return 0.0
    # characters, not words: CareGPT's BLEU does not depend on the segmenter
    return float(sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3))


def example_scores(prediction: str, reference: str) -> dict[str, float]:
    """The four scores of one example, each x100 and rounded to 4 decimals."""
    scores = {"bleu-4": _bleu4(prediction, reference), **_rouge_f(segment(prediction), segment(reference))}
    return {key: round(scores[key] * 100, 4) for key in METRIC_KEYS}


def per_example_scores(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """example_scores for every (prediction, reference) pair; the lists must be equally long."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: they must pair up one to one")
    return [example_scores(str(p), str(r)) for p, r in zip(predictions, references)]


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean BLEU-4 and ROUGE-1/2/L F (x100, 4 decimals) over the pairs; keys are METRIC_KEYS.

    No pairs at all is a mistake worth hearing about (a mean over nothing is not 0), so it raises.
    """
    rows = per_example_scores(predictions, references)
    if not rows:
        raise ValueError("no predictions to score: the prediction list is empty")
    return {key: round(sum(row[key] for row in rows) / len(rows), 4) for key in METRIC_KEYS}
