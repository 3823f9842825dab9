"""De-identification on the PHI sets: frozen-test targets, the issue's leaks, look-alikes untouched."""

from __future__ import annotations

import pytest

from caregpt.data.deid import deidentify
from caregpt.data.deid_detect import detect
from caregpt.data.deid_splits import SETS, evaluate_splits, load
from caregpt.medical.eval_cli import main as eval_main


def test_sets_have_three_hundred_records_and_the_three_categories():
    dev, test = load(SETS / "dev.jsonl"), load(SETS / "test.jsonl")
    assert len(dev) + len(test) >= 300
    assert not {r["text"] for r in dev} & {r["text"] for r in test}
    for rows in (dev, test):
        assert {r["category"] for r in rows} == {"names", "identifiers", "lookalikes"}
        assert all(not r["spans"] for r in rows if r["category"] == "lookalikes")


def test_frozen_test_split_meets_the_targets():
    report = evaluate_splits()
    test = report.splits["test (frozen, never tuned on)"]
    assert test["names"]["hidden"] / test["names"]["spans"] >= 0.92, report.format()
    assert test["identifiers"]["hidden"] == test["identifiers"]["spans"], report.format()
    assert test["lookalikes"]["altered"] == 0, report.format()


@pytest.mark.parametrize(("text", "secret", "kept"), [
    ("家属签字：丈夫 蒋文博", "蒋文博", "丈夫"),
    ("李先生（李国强，58岁）今日出院", "李国强", "58岁"),
    ("母亲王秀兰陪同就诊", "王秀兰", "母亲"),
    ("请冯主任会诊，主任冯国萍查房", "冯国萍", "查房"),
    ("患者：张建华  性别：男", "张建华", "性别"),
    ("患者 刘晓燕，因咳嗽就诊", "刘晓燕", "咳嗽"),
    ("身份证号：1101 0519 9001 0112 34", "0112 34", "身份证号"),
    ("联系电话一三八一二三四五六七八", "一三八一二三四五六七八", "联系电话"),
    ("医保卡号 3101 2345 6789，请核对", "2345 6789", "请核对"),
    ("手机 138  1234  5678", "5678", "手机"),
    ("座机：零二一 六二三四 五六七八，白天打", "五六七八", "白天打"),
])
def test_the_leaks_named_in_the_issue_are_closed(text, secret, kept):
    masked = deidentify(text)
    assert secret not in masked and kept in masked, masked


@pytest.mark.parametrize("text", [
    "阿莫西林0.5g，每日3次，口服7天", "WBC 12.5×10^9/L，PLT 245×10^9/L", "诊断：急性心肌梗死（I21.9）",
    "2015年确诊高血压，2019年行支架植入", "血压150/95mmHg，心率88次/分", "空腹血糖8.6 mmol/L，HbA1c 7.8%",
    "母亲商量后决定手术", "医生建议复查", "患者尤其应当注意饮食",
])
def test_look_alikes_stay_untouched(text):
    assert detect(text) == [] and deidentify(text) == text


def test_eval_cli_reports_dev_and_test(capsys):
    assert eval_main(["--task", "deid"]) == 0
    out = capsys.readouterr().out
    assert "[dev (tuned on)]" in out and "[test (frozen, never tuned on)]" in out and out.count("lookalikes") == 2
    from caregpt.eval.cli import main as caregpt_eval  # `caregpt eval --task deid` routes to the same report

    assert caregpt_eval(["--task", "deid"]) == 0 and "[test (frozen" in capsys.readouterr().out
