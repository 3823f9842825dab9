"""De-identification: detection per type, ID checksums, consistent placeholders, no false alarms on clinical text."""

from __future__ import annotations

import json
import random

import pytest

from caregpt.data.deid import deidentify, deidentify_record, deidentify_texts
from caregpt.data.deid_cli import main as deid_main
from caregpt.data.deid_detect import detect, id_check_char, valid_id18
from caregpt.data.deid_eval import RECALL_TARGETS, evaluate, load_labelled
from caregpt.data.deid_make_eval import OUTPUT as LABELLED, build


def _types(text: str) -> list[tuple[str, str]]:
    return [(s.type, s.text) for s in detect(text)]


def _valid_id(body17: str) -> str:
    return body17 + id_check_char(body17)


# ------------------------------------------------------------------ ID numbers

def test_id_checksum_follows_iso_7064_mod_11_2():
    # the worked example of the national standard (GB 11643-1999) ends in X
    assert valid_id18("11010519491231002X")
    assert not valid_id18("110105194912310021")  # same number, wrong check character
    rng = random.Random(7)
    for _ in range(50):
        body = "44" + "".join(rng.choice("0123456789") for _ in range(4)) + "19850317" + "".join(rng.choice("0123456789") for _ in range(3))
        good = _valid_id(body)
        bad = body + next(c for c in "0123456789X" if c != good[-1])
        assert valid_id18(good) and not valid_id18(bad)


def test_id_numbers_need_a_valid_checksum_unless_the_text_says_id():
    good = _valid_id("32010219900101123")
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    assert ("ID", good) in _types(f"身份证号{good}，已核对。")
    assert _types(f"订单编号{bad}已发货") == []  # 18 digits, wrong check character, no ID context
    assert ("ID", bad) in _types(f"身份证号：{bad}")  # a typo in a labelled ID is still an ID
    assert ("ID", "110105491231002") in _types("旧身份证110105491231002仍可查询")  # 15-digit legacy form
    assert _types("流水号 999999999999999") == []  # 15 digits without a province code / birth date


# ------------------------------------------------------------------ each type

@pytest.mark.parametrize("phone", [
    "13812345678", "138-1234-5678", "138 1234 5678", "+86 13812345678", "+86-138-1234-5678",
    "010-87654321", "(0755)12345678", "0571-8888888", "+86 10 8765 4321", "(555) 123-4567", "+1 555 123 4567",
])
def test_phone_formats(phone):
    assert ("PHONE", phone) in _types(f"联系电话 {phone} 。")


def test_emails_addresses_record_numbers_and_dates():
    assert ("EMAIL", "zhang.san88@hospital.org.cn") in _types("邮箱zhang.san88@hospital.org.cn，请查收")
    assert ("ADDRESS", "北京市朝阳区建国路88号3号楼2单元501室") in _types("住址：北京市朝阳区建国路88号3号楼2单元501室。")
    assert ("ADDRESS", "广东省广州市天河区天河路385号") in _types("家住广东省广州市天河区天河路385号，近日发热")
    assert ("ADDRESS", "221 Baker Street, Springfield, IL 62704") in _types("She lives at 221 Baker Street, Springfield, IL 62704.")
    for text, value in [("住院号：ZY20230512001", "ZY20230512001"), ("病历号 12345678", "12345678"), ("医保卡号H12345678901", "H12345678901"),
                        ("MRN: 00123456.", "00123456"), ("Insurance ID A7788123", "A7788123")]:
        assert ("MRN", value) in _types(text), text
    for date in ["2023年5月12日", "2023-05-12", "2023/5/12", "12/05/2023", "5月12日", "May 12, 2023", "12 May 2023", "二〇二三年五月十二日"]:
        assert ("DATE", date) in _types(f"于{date}复诊。"), date


def test_names_in_clinical_context():
    assert ("NAME", "张三") in _types("患者张三，男，45岁，因发热入院。")
    assert ("NAME", "李四") in _types("姓名：李四  性别：女")
    assert ("NAME", "王") in _types("王女士于今日复诊。")  # the title stays: [姓名1]女士
    assert ("NAME", "李明") in _types("请李明先生到3号诊室。")
    assert ("NAME", "欧阳娜娜") in _types("患儿欧阳娜娜，女，3岁。")
    assert ("NAME", "Smith") in _types("Mr. Smith reports chest pain.")
    assert ("NAME", "Jane Doe") in _types("Seen by Dr. Jane Doe today.")
    assert ("NAME", "John Smith") in _types("Patient John Smith, a 45-year-old man, presented with fever.")
    assert deidentify("王女士于今日复诊。") == "[姓名1]女士于今日复诊。"


@pytest.mark.parametrize("text", [
    "血压 120/80 mmHg，心率 76 次/分，呼吸 18 次/分，体温 37.2℃。",
    "每日服用 2 片，每片 0.5 g，饭后温水送服，连续服用 2 周。",
    "血糖 7.8 mmol/L，糖化血红蛋白 6.5%，白细胞计数 10.5×10^9/L，血小板 210×10^9/L。",
    "患者高热3天，于今日入院，主任医师查房后建议复查血常规。",
    "患者左侧肢体无力2小时，头颅CT未见出血。",
    "患者常感乏力，许多年前曾患肺结核，已治愈。",
    "谢谢医生的耐心解答！祝医生工作顺利。",
    "2型糖尿病患者空腹血糖控制目标为4.4～7.0 mmol/L，3个月后复查。",
    "Blood pressure 135/85 mmHg, heart rate 72 bpm, take 2 tablets daily for 14 days.",
    "Hemoglobin 11.2 g/dL, WBC 6.4 x10^9/L; the patient denies fever or chills.",
])
def test_no_false_positives_on_ordinary_medical_text(text):
    assert detect(text) == []
    assert deidentify(text) == text


# ------------------------------------------------------------------ records and consistency

def test_placeholders_are_consistent_within_a_record_and_names_are_found_again():
    record = {
        "instruction": "患者张三，电话138-1234-5678，昨天和李四一起来的",
        "input": "",
        "output": "张三您好，请保持电话13812345678畅通。",
        "history": [["联系人：李四", "好的，李四的信息已记录"]],
        "department": "内科",
    }
    clean, counts = deidentify_record(record)
    assert clean["instruction"].startswith("患者[姓名1]，电话[电话1]")
    assert clean["output"] == "[姓名1]您好，请保持电话[电话1]畅通。"  # no context word here: found because of the instruction
    assert clean["history"] == [["联系人：[姓名2]", "好的，[姓名2]的信息已记录"]]
    assert "[姓名2]" in clean["instruction"]
    assert clean["department"] == "内科" and record["instruction"].startswith("患者张三")  # other fields and the input untouched
    assert counts["NAME"] == 5 and counts["PHONE"] == 2
    plain, _ = deidentify_texts(["患者张三来了"], numbered=False)
    assert plain == ["患者[姓名]来了"]


def test_sharegpt_and_preference_records_keep_their_structure():
    sharegpt = {"conversations": [{"from": "human", "value": "我叫王小明，电话13912345678"}, {"from": "gpt", "value": "王小明您好"}], "system": "你是医生"}
    clean, _ = deidentify_record(sharegpt)
    assert [t["from"] for t in clean["conversations"]] == ["human", "gpt"]
    assert clean["conversations"][1]["value"] == "[姓名1]您好" and "[电话1]" in clean["conversations"][0]["value"]
    pref = {"instruction": "患者李梅咳嗽", "input": "", "output": ["李梅您好，建议就医", "不用管"], "history": []}
    clean, _ = deidentify_record(pref)
    assert clean["output"] == ["[姓名1]您好，建议就医", "不用管"]


def test_deid_cli_masks_a_file_and_reports_counts_and_bad_lines(tmp_path, capsys):
    source = tmp_path / "raw.jsonl"
    rows = [
        {"instruction": "患者赵六，身份证号11010519491231002X，住院号ZY123456789", "input": "", "output": "赵六您好", "history": []},
        {"instruction": "血压 120/80 怎么办", "input": "", "output": "注意休息", "history": []},
    ]
    source.write_text(json.dumps(rows[0], ensure_ascii=False) + "\n{not json\n" + json.dumps(rows[1], ensure_ascii=False) + "\n", encoding="utf-8")
    target, report_path = tmp_path / "clean.jsonl", tmp_path / "report.json"
    code = deid_main(["--input", str(source), "--output", str(target), "--report", str(report_path)])
    assert code == 1  # one invalid line: reported, left out
    out = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert out[0]["instruction"] == "患者[姓名1]，身份证号[身份证号1]，住院号[病历号1]" and out[0]["output"] == "[姓名1]您好"
    assert out[1] == rows[1]
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["records"] == 2 and report["records_changed"] == 1
    assert report["masked"]["NAME"] == 2 and report["masked"]["ID"] == 1 and report["masked"]["MRN"] == 1
    assert report["invalid_lines"] == 1 and report["invalid_examples"][0].startswith(f"{source}:2:")
    assert "赵六" not in report_path.read_text(encoding="utf-8") and "赵六" not in capsys.readouterr().out
    assert deid_main(["--input", str(source), "--output", str(source)]) == 2


# ------------------------------------------------------------------ the labelled set

def test_labelled_set_is_ours_deterministic_and_well_formed():
    rows = load_labelled(LABELLED)  # raises on a span that does not match its text
    assert len(rows) >= 200 and {r["lang"] for r in rows} == {"zh", "en"}
    assert build() == rows  # the shipped file is exactly what the generator makes
    ids = [s["text"] for r in rows for s in r["spans"] if s["type"] == "ID" and len(s["text"]) == 18]
    assert ids and all(valid_id18(i) for i in ids)  # generated with an independent checksum implementation
    types = {s["type"] for r in rows for s in r["spans"]}
    assert types == {"NAME", "ID", "PHONE", "EMAIL", "ADDRESS", "MRN", "DATE"}
    assert sum(not r["spans"] for r in rows) >= 30  # sentences without identifiers measure false positives


def test_recall_targets_on_the_labelled_set(capsys):
    result = evaluate(load_labelled(LABELLED))
    for kind, target in RECALL_TARGETS.items():
        assert result["types"][kind]["recall"] >= target, (kind, result["types"][kind])
    assert all(row["precision"] >= 0.9 for row in result["types"].values())
    assert deid_main(["--evaluate"]) == 0
    assert "recall" in capsys.readouterr().out
