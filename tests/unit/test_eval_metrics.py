"""BLEU-4 / ROUGE-1/2/L against values worked out by hand (CareGPT's recipe, see caregpt.eval.metrics)."""

from __future__ import annotations

import logging

import pytest

from caregpt.eval.metrics import METRIC_KEYS, example_scores, generation_scores, per_example_scores


def test_identical_text_scores_100_on_every_metric():
    # at least 4 characters: BLEU-4 needs a 4-gram, otherwise smoothing caps it below 100
    text = "患者头痛发热三天，建议血常规检查。"
    assert generation_scores([text], [text]) == {key: 100.0 for key in METRIC_KEYS}


def test_disjoint_text_scores_0_on_every_metric():
    # no shared character and no shared word: every n-gram precision and overlap is zero
    assert generation_scores(["头痛发热"], ["咳嗽流涕"]) == {key: 0.0 for key in METRIC_KEYS}


def test_partial_overlap_latin_words_by_hand():
    # prediction "a b c", reference "a b d" (5 characters each, spaces included).
    # ROUGE on words [a, b, c] vs [a, b, d]:
    #   rouge-1: 2 shared unigrams of 3 -> P = R = 2/3 -> F = 2/3
    #   rouge-2: bigrams {ab, bc} vs {ab, bd}: 1 of 2 -> F = 1/2
    #   rouge-l: longest common subsequence "a b" = 2 of 3 -> F = 2/3
    # BLEU-4 on characters, equal lengths so no brevity penalty:
    #   1-grams a,_,b,_,c vs a,_,b,_,d: 4/5; 2-grams "a_","_b","b_","_c": 3/4;
    #   3-grams "a_b","_b_","b_c": 2/3; 4-grams "a_b_","_b_c": 1/2
    #   BLEU = (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 0.2 ** 0.25
    scores = generation_scores(["a b c"], ["a b d"])
    assert scores["rouge-1"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert scores["rouge-2"] == pytest.approx(50.0, abs=1e-3)
    assert scores["rouge-l"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert scores["bleu-4"] == pytest.approx(100 * 0.2 ** 0.25, abs=1e-3)


def test_partial_overlap_chinese_by_hand():
    import jieba

    # the hand computation assumes jieba's segmentation of these two phrases
    assert list(jieba.cut("头痛发热")) == ["头痛", "发热"] and list(jieba.cut("头痛咳嗽")) == ["头痛", "咳嗽"]
    # ROUGE on [头痛, 发热] vs [头痛, 咳嗽]: rouge-1 1/2, rouge-2 0 (the one bigram differs), rouge-l 1/2.
    # BLEU-4 on characters 头痛发热 vs 头痛咳嗽: 1-grams 2/4, 2-grams 1/3 (头痛), 3-grams 0/2, 4-grams 0/1.
    # Smoothing method3 (NIST geometric) replaces the k-th zero precision by 1 / (2**k * its count):
    # 3-grams -> 1/(2*2) = 1/4, 4-grams -> 1/(4*1) = 1/4. BLEU = (1/2 * 1/3 * 1/4 * 1/4) ** (1/4) = 96 ** -0.25.
    scores = generation_scores(["头痛发热"], ["头痛咳嗽"])
    assert scores["rouge-1"] == pytest.approx(50.0, abs=1e-3)
    assert scores["rouge-2"] == pytest.approx(0.0, abs=1e-3)
    assert scores["rouge-l"] == pytest.approx(50.0, abs=1e-3)
    assert scores["bleu-4"] == pytest.approx(100 * 96 ** -0.25, abs=1e-3)


@pytest.mark.parametrize("prediction,reference", [("", "头痛发热"), ("   ", "头痛发热"), ("头痛发热", ""), ("", "")])
def test_empty_side_scores_0_without_crashing(prediction, reference):
    assert example_scores(prediction, reference) == {key: 0.0 for key in METRIC_KEYS}


def test_scores_are_means_over_examples():
    text = "患者头痛发热三天"
    per = per_example_scores([text, ""], [text, text])
    assert per[0] == {key: 100.0 for key in METRIC_KEYS} and per[1] == {key: 0.0 for key in METRIC_KEYS}
    assert generation_scores([text, ""], [text, text]) == {key: 50.0 for key in METRIC_KEYS}


def test_values_are_rounded_to_4_decimals():
    scores = generation_scores(["a b c", "头痛发热"], ["a b d", "头痛咳嗽"])
    assert all(round(v, 4) == v for v in scores.values())


def test_mismatched_or_empty_lists_are_refused():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        generation_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        generation_scores([], [])


def test_jieba_does_not_log_at_info(caplog):
    with caplog.at_level(logging.DEBUG):
        generation_scores(["今天天气不错"], ["今天天气很好"])
    assert not [r for r in caplog.records if r.name.startswith("jieba")]
    assert logging.getLogger("jieba").getEffectiveLevel() >= logging.WARNING
