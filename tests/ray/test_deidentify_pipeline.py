"""`deidentify: true`: identifiers are masked as records are read, before templating and tokenization."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.ray]

RECORD = {"instruction": "患者张三，电话13812345678，身份证110101199003074514，头痛三天怎么办？", "input": "",
          "output": "张三您好，建议去神经内科就诊。"}


def test_records_are_masked_only_when_asked(ray_local, tmp_path):
    from caregpt.config.loader import load_config
    from caregpt.data.pipeline import dataset_records, plan_data
    from caregpt.data.prepare import fingerprint

    data = tmp_path / "patients.jsonl"
    data.write_text(json.dumps(RECORD, ensure_ascii=False) + "\n" + "医生你好，我的邮箱是 li.si@example.com\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("患者王五于2023年5月12日入院，电话 13912345678。\n", encoding="utf-8")
    plain = load_config(None, {"dataset": str(data)})
    masked = load_config(None, {"dataset": str(data), "deidentify": True})
    plan = plan_data(masked)
    rows = dataset_records(plan.attrs[0], plan.kind, None, None, True).take_all()
    kept = dataset_records(plan.attrs[0], plan.kind, None, None, False).take_all()
    assert kept[0]["contents"][0] == RECORD["instruction"]  # off by default: untouched
    prompt, answer = rows[0]["contents"]
    assert "13812345678" not in prompt and "110101199003074514" not in prompt and "张三" not in prompt
    assert "[电话1]" in prompt and "[身份证号1]" in prompt
    assert answer.startswith(prompt[prompt.index("[姓名"):prompt.index("]") + 1])  # the same name, the same placeholder
    assert rows[1]["error"]  # the unparseable line is still reported, not dropped
    # pretraining text lines are masked too
    pt = load_config(None, {"stage": "pt", "dataset": str(tmp_path / "notes.txt"), "deidentify": True})
    pt_plan = plan_data(pt)
    text = dataset_records(pt_plan.attrs[0], pt_plan.kind, None, None, True).take_all()[0]["text"]
    assert "13912345678" not in text and "2023年5月12日" not in text and "王五" not in text
    # a masked copy never reuses the unmasked tokenized cache
    assert fingerprint(plain, plan, "none") != fingerprint(masked, plan, "none")
