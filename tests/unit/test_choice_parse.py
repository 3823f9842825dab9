"""Reading option letters from model replies and exam records, and refusing bad records clearly."""

from __future__ import annotations

import json

import pytest

from caregpt.config.loader import ConfigError
from caregpt.eval.choice_data import build_messages, choose_shots, load_items, subset, validate_record
from caregpt.eval.choice_parse import extract_choice, parse_answer_field

OPTIONS = {"A": "卵巢", "B": "前庭大腺", "C": "前庭球", "D": "乳腺"}


@pytest.mark.parametrize("reply,expected", [
    ("答案是B", "B"),
    ("答案：C", "C"),
    ("答案为 D。", "D"),
    ("正确答案：A和D", "AD"),
    ("正确答案是 A、C", "AC"),
    ("答：A、B、C", "ABC"),
    ("选B", "B"),
    ("应选择选项D", "D"),
    ("故选C。", "C"),
    ("B、C", "BC"),
    ("B,C", "BC"),
    ("BC", "BC"),
    ("B", "B"),
    ("(C)", "C"),
    ("（C）", "C"),
    ("【A】", "A"),
    ("B. 前庭大腺", "B"),
    ("B、前庭大腺是正确的", "B"),
    ("Ｂ", "B"),  # full-width letter
    ("答案：Ａ", "A"),
    ("The answer is B", "B"),
    ("The answer is (C).", "C"),
    ("the correct answer is D.", "D"),
    ("Answer: A", "A"),
    ("Answers: A and C", "AC"),
    ("我认为 (C) 是对的", "C"),
    ("分析：A项错误。答案是B。综上所述，答案是C", "C"),  # the last answer statement is the conclusion
    ("答案是B，B", "B"),
    ("卵巢", "A"),  # quotes exactly one option's text
])
def test_extracts_the_chosen_letters(reply, expected):
    assert extract_choice(reply, OPTIONS) == expected


@pytest.mark.parametrize("reply", [
    "",
    "   ",
    None,
    "不知道",
    "::::::::",
    "A patient with fever should rest",  # English article, not option A
    "Because the gland is paired",
    "HbA1c 升高提示血糖控制差",
    "B超显示肝脏增大",  # B超 is an ultrasound scan, not option B
    "答案是E",  # E is not an option of this question
    "我觉得 (A) 不对，(C) 才对",  # bracketed letters disagree
    "卵巢和乳腺都有可能",  # quotes two options
])
def test_returns_none_when_the_reply_names_no_clear_option(reply):
    assert extract_choice(reply, OPTIONS) is None


def test_valid_letters_follow_the_options():
    assert extract_choice("答案是E", {"A": "1", "B": "2", "C": "3", "D": "4", "E": "5"}) == "E"
    assert extract_choice("答案是E", ["A", "B", "C", "D"]) is None
    assert extract_choice("答案是E") == "E"  # default letters A-E


@pytest.mark.parametrize("value,expected", [("B", "B"), ("bc", "BC"), ("B,C", "BC"), ("C、B", "BC"), (["B", "C"], "BC"),
                                            ("A和D", "AD"), (" D ", "D"), ("Ｃ", "C")])
def test_gold_answer_field_forms(value, expected):
    assert parse_answer_field(value) == expected


@pytest.mark.parametrize("value", ["", None, "卵巢", 3, "B1", "[]"])
def test_gold_answer_field_rejects_non_letters(value):
    with pytest.raises(ValueError, match="option letter"):
        parse_answer_field(value)


def _write(tmp_path, records: list) -> str:
    path = tmp_path / "exam.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    return str(path)


GOOD = {"id": "q1", "question": "女性生殖腺是", "options": OPTIONS, "answer": "A", "subject": "解剖学"}


def test_valid_file_loads_with_defaults(tmp_path):
    path = _write(tmp_path, [GOOD, {"question": "多选", "option": {"A": "x", "B": "y", "C": "z"}, "answer": "A,C"}])
    first, second = load_items(path)
    assert (first.id, first.answer, first.subject, first.multi) == ("q1", "A", "解剖学", False)
    assert second.id == f"{path}:2" and second.subject == "all" and second.answer == "AC" and second.multi
    assert list(second.options) == ["A", "B", "C"]


def test_medqa_answer_idx_wins_over_answer_text(tmp_path):
    record = {"question": "q", "options": {"A": "x", "B": "y"}, "answer": "y", "answer_idx": "B"}
    (item,) = load_items(_write(tmp_path, [record]))
    assert item.answer == "B"


@pytest.mark.parametrize("record,field,words", [
    ({**GOOD, "answer": "E"}, "answer", "not among the options A, B, C, D"),
    ({**GOOD, "answer": "卵巢"}, "answer", "option letter"),
    ({**GOOD, "question": ""}, "question", "non-empty"),
    ({k: v for k, v in GOOD.items() if k != "options"}, "options", "at least two options"),
    ({**GOOD, "options": {"A": "x"}}, "options", "at least two options"),
    ({**GOOD, "options": {"a": "x", "B": "y"}}, "options", "single capital letters"),
    ({**GOOD, "options": {"A": "", "B": "y"}}, "options", "empty option text"),
])
def test_invalid_records_name_file_line_and_field(tmp_path, record, field, words):
    path = _write(tmp_path, [GOOD | {"id": "ok"}, record])
    with pytest.raises(ConfigError) as info:
        load_items(path)
    message = str(info.value)
    assert f"{path}:2" in message and f"'{field}'" in message and words in message
    assert f"{path}:1" not in message


def test_bad_json_and_duplicate_ids_and_counts(tmp_path):
    path = _write(tmp_path, [GOOD, "{not json", GOOD, {**GOOD, "id": "q2", "answer": "Z"}])
    with pytest.raises(ConfigError) as info:
        load_items(path)
    message = str(info.value)
    assert "3 invalid record(s)" in message
    assert f"{path}:2: not valid JSON" in message
    assert f"{path}:3: field 'id' 'q1' repeats the id of {path}:1" in message
    assert f"{path}:4" in message


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_items(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="no records"):
        load_items(tmp_path / "empty.jsonl")


def test_validate_record_rejects_non_objects():
    item, problems = validate_record(["not", "a", "dict"], "f.jsonl:7")
    assert item is None and problems == ["f.jsonl:7: expected a JSON object per line, got list"]


def _items(tmp_path):
    records = [{**GOOD, "id": f"{s}{i}", "subject": s} for s in ("x", "y") for i in range(4)]
    return load_items(_write(tmp_path, records))


def test_subset_is_per_subject_then_overall_in_file_order(tmp_path):
    items = _items(tmp_path)
    assert [i.id for i in subset(items, max_per_subject=2)] == ["x0", "x1", "y0", "y1"]
    assert [i.id for i in subset(items, max_samples=3, max_per_subject=2)] == ["x0", "x1", "y0"]
    assert subset(items) == items


def test_shots_prefer_the_same_subject_and_never_the_item_itself(tmp_path):
    items = _items(tmp_path)
    shots = choose_shots(items[1], items, 5)
    assert [s.id for s in shots] == ["x0", "x2", "x3", "y0", "y1"]
    assert choose_shots(items[1], items, 0) == []
    messages = build_messages(items[1], shots[:2])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == "A" and messages[-1]["content"].endswith("答案：")
    assert "A. 卵巢" in messages[-1]["content"]


def test_likelihood_choice_rule_single_and_declared_multi_answer(tmp_path):
    from caregpt.eval.choice import _pick, declared_multi

    records = [GOOD, {**GOOD, "id": "m", "answer": "AB", "type": "多选题"}, {**GOOD, "id": "u", "answer": "AB"},
               {**GOOD, "id": "q", "question": "（多选）女性生殖腺是", "answer": "A"}]
    single, multi, undeclared, in_question = load_items(_write(tmp_path, records))
    assert [declared_multi(i) for i in (single, multi, undeclared, in_question)] == [False, True, False, True]
    probs = {"A": 0.10, "B": 0.40, "C": 0.30, "D": 0.20}
    assert _pick(single, probs) == "B"  # argmax
    assert _pick(multi, probs) == "BC"  # every letter at least as likely as uniform (0.25)
    assert _pick(single, {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}) == "A"  # ties: the earlier letter
    assert _pick(multi, {"A": 0.97, "B": 0.01, "C": 0.01, "D": 0.01}) == "A"  # the top letter alone if nothing else is likely
    # the gold answer never sets the number of letters: an undeclared item is answered with one letter, however
    # many its gold has, and a declared item with a one-letter gold still gets every likely letter
    assert _pick(undeclared, probs) == "B"
    assert _pick(in_question, probs) == "BC"


def test_summary_puts_chance_and_majority_letter_beside_accuracy():
    from caregpt.eval.choice import format_accuracy, summarize

    # a model that answers "A" to everything on a set where most answers are A
    golds = ["A"] * 26 + ["B"] * 6 + ["C"] * 5 + ["D"] * 3
    rows = [{"id": str(i), "subject": "s", "answer": g, "predicted": "A", "parsed": True, "correct": g == "A",
             "truncated": False, "options": 4, "declared_multi": False} for i, g in enumerate(golds)]
    rows.append({"id": "m", "subject": "s", "answer": "AB", "predicted": "A", "parsed": True, "correct": False,
                 "truncated": False, "options": 4, "declared_multi": True})
    summary = summarize(rows)
    assert summary["accuracy"] == round(100 * 26 / 41, 4)
    assert summary["majority_letter"] == "A" and summary["majority_letter_accuracy"] == summary["accuracy"]
    assert summary["chance_accuracy"] == round(100 * (40 / 4 + 1 / 15) / 41, 4)
    assert summary["most_common_prediction"] == "A" and summary["most_common_prediction_share"] == 100.0
    line = format_accuracy(summary)
    assert "chance 24.6%" in line and "always 'A' 63.4%" in line and "answered 'A' on 100% of items" in line
