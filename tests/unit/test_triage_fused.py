"""Triage with the learned department classifier fused with retrieval: label mapping, calibration, the
low-confidence fallback, and top-1/top-3 against the constant baseline on the frozen test part."""

from __future__ import annotations

import numpy as np
import pytest

from caregpt.medical.catalog import load_catalog
from caregpt.medical.department_map import DEPARTMENT_MAP, resolve_targets
from caregpt.medical.triage import DepartmentTriage
from caregpt.medical.triage_classifier import SAMPLE, TEMPERATURES, read_jsonl, split_of
from caregpt.medical.triage_eval import constant_baseline, evaluate_triage


@pytest.fixture(scope="module")
def guides(test_data):
    return test_data / "hospital_guide_departments.json"


@pytest.fixture(scope="module")
def triage(guides):
    return DepartmentTriage(load_catalog(guides))


def test_labels_that_are_catalog_names_map_to_themselves_and_new_labels_are_mapped(guides):
    catalog = load_catalog(guides)
    for name in ("消化内科", "骨科", "口腔科", "皮肤科", "神经外科"):
        assert resolve_targets(name, catalog) == {name}
    assert resolve_targets("眼科", catalog) == set(catalog.groups()["眼科"])  # a group name means its departments
    for label in ("美容", "整形美容科", "整形美容"):
        assert resolve_targets(label, catalog) == {"整形外科", "皮肤科"}
    assert resolve_targets("中医科", catalog) == {"全科医学"} and "no traditional" in DEPARTMENT_MAP["中医科"][1]
    assert resolve_targets("火星科", catalog) is None


def test_shipped_sample_is_small_and_from_the_dev_split_only():
    records = read_jsonl([SAMPLE])
    assert SAMPLE.stat().st_size < 400_000 and len(records) >= 1000
    assert all(split_of(r) == "dev" for r in records)


def test_fused_triage_is_calibrated_and_says_when_it_is_unsure(triage):
    result = triage.recommend("脸上长了很多痘痘，又红又痒，还脱皮", k=3)
    assert result.method == "retrieval+classifier" and result.recommendations[0].department == "皮肤科"
    assert 0.0 < result.confidence <= 1.0 and not result.unsure
    tail = triage.recommend("尾椎骨那里开裂了，流脓，坐着疼", k=3)
    assert not {r.department for r in tail.recommendations} & set(triage.catalog.groups()["眼科"])
    probs = triage.classifier.probabilities("最近总是咳嗽有痰")
    assert abs(probs.sum() - 1.0) < 1e-9 and triage.classifier.temperature in TEMPERATURES
    vague = triage.recommend("不太舒服", k=3)
    if vague.confidence < 0.3:
        assert [r.department for r in vague.unsure] == ["全科医学"] or "全科医学" in [r.department for r in vague.recommendations]
        assert "low confidence" in vague.notes[0]
    scores = [r.score for r in result.recommendations]
    assert scores == sorted(scores, reverse=True)


def test_constant_baseline_picks_the_three_most_common_departments_greedily():
    sets = [{"a"}] * 5 + [{"b"}] * 3 + [{"a", "b"}] * 2 + [{"c"}] * 2 + [{"d"}]
    assert constant_baseline(sets) == ["a", "b", "c"]


def test_frozen_test_part_meets_the_targets_and_beats_the_constant_baseline(full_data, guides):
    report = evaluate_triage([full_data / "sft_cmtmedqa_multiturn.jsonl"], guides, parts=("test",))
    (result,) = report.files
    assert result.split == "test" and result.scored >= 300
    top1, top3 = result.rate(result.top1), result.rate(result.top3)
    assert top1 >= 0.60 and top3 >= 0.85, report.format()
    assert top3 - result.rate(result.constant_top3) >= 0.15, report.format()
    assert top3 > result.rate(result.retrieval_top3) and np.isclose(result.rate(result.chance_top3), result.chance_top3 / result.scored)
