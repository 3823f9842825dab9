"""Registry, readers and record formats without Ray: every kind, every file type, errors with file:line."""

from __future__ import annotations

import csv
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from caregpt.config.loader import ConfigError
from caregpt.data.formats import check_stage_kind, dataset_kind, normalize
from caregpt.data.readers import iter_file_records, plan_read_tasks, read_task_records
from caregpt.data.registry import check_file, resolve_datasets, sha1_of

SFT = [
    {"instruction": "头痛怎么办？", "input": "", "output": "先休息，持续不缓解请就医。", "history": []},
    {"instruction": "还需要做检查吗？", "input": "女，30岁", "output": "建议测血压。", "history": [["我头痛", "多久了？"]]},
]


def _registry(tmp_path, entries):
    (tmp_path / "dataset_info.json").write_text(json.dumps(entries, ensure_ascii=False))
    return tmp_path


def _write(path, records, kind):
    if kind == "jsonl":
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    elif kind == "json":
        path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    elif kind == "csv":
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["instruction", "input", "output"])
            writer.writeheader()
            for r in records:
                writer.writerow({k: r[k] for k in ("instruction", "input", "output")})
    elif kind == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path)


def _records(attr):
    kind = dataset_kind(attr)
    return [normalize(r.value, r.loc, attr, kind) if not r.error else r for r in iter_file_records(attr.path)]


def test_caregpt_registry_format_is_read_as_is(tmp_path):
    (tmp_path / "multi-med.json").write_text(json.dumps(SFT, ensure_ascii=False))
    (tmp_path / "wiki.txt").write_text("第一行\n第二行\n")
    _registry(tmp_path, {
        "mm": {"file_name": "multi-med.json", "columns": {"prompt": "instruction", "query": "", "response": "output", "history": "history"}},
        "wiki_demo": {"file_name": "wiki.txt", "columns": {"prompt": "text", "query": "", "response": "", "history": ""}},
        "guanaco": {"hf_hub_url": "JosephusCheung/GuanacoDataset"},
        "rlhf_zh": {"file_name": "comparison.json", "ranking": True},
    })
    mm, wiki, hub, pref = resolve_datasets(["mm", "wiki_demo", "guanaco", "rlhf_zh"], tmp_path)
    assert (mm.load_from, dataset_kind(mm)) == ("file", "sft")
    assert mm.column("query") is None  # "" in the registry: this dataset has no input column
    assert dataset_kind(wiki) == "text"
    assert (hub.load_from, hub.path) == ("hf_hub", "JosephusCheung/GuanacoDataset")
    assert dataset_kind(pref) == "pref"
    records = _records(mm)
    assert records[1].messages == [
        {"role": "user", "content": "我头痛"},
        {"role": "assistant", "content": "多久了？"},
        {"role": "user", "content": "还需要做检查吗？"},  # query column disabled: input is not appended
        {"role": "assistant", "content": "建议测血压。"},
    ]


def test_unknown_dataset_suggests_nearest(tmp_path):
    _registry(tmp_path, {"medical_sft": {"file_name": "x.jsonl"}})
    with pytest.raises(ConfigError, match=r"'medical_sf'.*did you mean 'medical_sft'"):
        resolve_datasets(["medical_sf"], tmp_path)


def test_registry_entry_errors(tmp_path):
    _registry(tmp_path, {"a": {"file_nme": "x.jsonl"}, "b": {"script_url": "b"}, "c": {"file_name": "missing.jsonl"}})
    with pytest.raises(ConfigError, match=r"unknown field 'file_nme'.*'file_name'"):
        resolve_datasets(["a"], tmp_path)
    with pytest.raises(ConfigError, match="script_url.*not supported"):
        check_file(resolve_datasets(["b"], tmp_path)[0])
    with pytest.raises(ConfigError, match="file not found"):
        check_file(resolve_datasets(["c"], tmp_path)[0])


def test_sha1_mismatch_warns(tmp_path, caplog):
    _write(tmp_path / "d.jsonl", SFT, "jsonl")
    _registry(tmp_path, {"ok": {"file_name": "d.jsonl", "file_sha1": sha1_of(tmp_path / "d.jsonl")}, "bad": {"file_name": "d.jsonl", "file_sha1": "0" * 40}})
    with caplog.at_level(logging.WARNING):
        check_file(resolve_datasets(["ok"], tmp_path)[0])
        assert not caplog.records
        check_file(resolve_datasets(["bad"], tmp_path)[0])
    assert "sha1" in caplog.text


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "parquet"])
def test_sft_in_every_file_type(tmp_path, suffix):
    path = tmp_path / f"data.{suffix}"
    _write(path, SFT, suffix)
    (attr,) = resolve_datasets([str(path)], tmp_path)  # a file path works without a registry entry
    records = _records(attr)
    assert [r.error for r in records] == ["", ""]
    assert records[0].messages == [{"role": "user", "content": "头痛怎么办？"}, {"role": "assistant", "content": "先休息，持续不缓解请就医。"}]
    assert records[1].messages[-2]["content"] == "还需要做检查吗？\n女，30岁"


def test_plain_text_and_jsonl_text(tmp_path):
    (tmp_path / "c.txt").write_text("发热是常见症状。\n\n高血压需要长期管理。\n", encoding="utf-8")
    _write(tmp_path / "c.jsonl", [{"text": "糖尿病饮食控制。"}], "jsonl")
    _registry(tmp_path, {"t": {"file_name": "c.txt"}, "j": {"file_name": "c.jsonl", "columns": {"prompt": "text"}}})
    txt, js = resolve_datasets(["t", "j"], tmp_path)
    assert [(r.text, r.loc.rsplit(":", 1)[1]) for r in _records(txt)] == [("发热是常见症状。", "1"), ("高血压需要长期管理。", "3")]
    assert _records(js)[0].text == "糖尿病饮食控制。"


def test_preference_pairs_alpaca_and_sharegpt(tmp_path):
    _write(tmp_path / "p.jsonl", [{"instruction": "发烧39度怎么办", "input": "", "output": ["及时就医并补液", "不用管"]}], "jsonl")
    _write(tmp_path / "s.jsonl", [{"conversations": [{"from": "human", "value": "咳嗽"}], "chosen": {"from": "gpt", "value": "多喝水"}, "rejected": {"from": "gpt", "value": "随便"}}], "jsonl")
    _registry(tmp_path, {"p": {"file_name": "p.jsonl", "ranking": True}, "s": {"file_name": "s.jsonl", "ranking": True, "formatting": "sharegpt"}})
    p, s = resolve_datasets(["p", "s"], tmp_path)
    (rp,) = _records(p)
    assert (rp.error, rp.chosen, rp.rejected, rp.roles) == ("", "及时就医并补液", "不用管", ("user",))
    (rs,) = _records(s)
    assert (rs.error, rs.chosen, rs.contents) == ("", "多喝水", ("咳嗽",))


def test_sharegpt_both_tag_styles_and_system(tmp_path):
    data = [
        {"conversations": [{"from": "human", "value": "胃痛"}, {"from": "gpt", "value": "饭后痛吗？"}], "system": "你是医生"},
        {"messages": [{"role": "system", "content": "简洁回答"}, {"role": "user", "content": "失眠"}, {"role": "assistant", "content": "规律作息"}]},
    ]
    _write(tmp_path / "sg.json", data, "json")
    _registry(tmp_path, {"sg": {"file_name": "sg.json", "formatting": "sharegpt"}})
    first, second = _records(resolve_datasets(["sg"], tmp_path)[0])
    assert first.roles == ("system", "user", "assistant") and first.contents[0] == "你是医生"
    assert second.roles == ("system", "user", "assistant") and second.contents[0] == "简洁回答"


def test_invalid_records_carry_file_line_and_reason(tmp_path):
    lines = [
        json.dumps(SFT[0], ensure_ascii=False),
        "{broken json",
        json.dumps({"instruction": "  ", "output": "x"}),
        json.dumps({"instruction": "q", "output": "a", "history": [["only user"]]}),
        json.dumps({"instruction": "q", "output": 3}),
        json.dumps(["not", "an", "object"]),
    ]
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    (attr,) = resolve_datasets([str(tmp_path / "bad.jsonl")], tmp_path)
    records = _records(attr)
    errors = {r.loc.rsplit(":", 1)[1]: r.error for r in records}
    assert errors["1"] == ""
    assert "invalid JSON" in errors["2"]
    assert "'instruction'" in errors["3"] and "empty" in errors["3"]
    assert "history" in errors["4"] and "turn 1" in errors["4"]
    assert "'output'" in errors["5"] and "string" in errors["5"]
    assert "expected an object" in errors["6"]


def test_sharegpt_bad_turn_order_is_invalid(tmp_path):
    _write(tmp_path / "o.jsonl", [{"conversations": [{"from": "gpt", "value": "你好"}, {"from": "human", "value": "嗯"}]}], "jsonl")
    _registry(tmp_path, {"o": {"file_name": "o.jsonl", "formatting": "sharegpt"}})
    (record,) = _records(resolve_datasets(["o"], tmp_path)[0])
    assert "'assistant' but 'user' was expected" in record.error


def test_wrong_kind_for_stage_is_a_clear_error(tmp_path):
    (tmp_path / "c.txt").write_text("文本\n")
    _registry(tmp_path, {"t": {"file_name": "c.txt"}})
    (attr,) = resolve_datasets(["t"], tmp_path)
    check_stage_kind("pt", attr)
    with pytest.raises(ConfigError, match=r"'t' is plain text.*stage 'sft' needs instruction data"):
        check_stage_kind("sft", attr)
    with pytest.raises(ConfigError, match=r"stage 'dpo' needs preference pairs"):
        check_stage_kind("dpo", attr)


def test_byte_range_tasks_cover_every_line_once(tmp_path):
    path = tmp_path / "big.jsonl"
    rows = [{"instruction": f"问题{i}" * (1 + i % 7), "output": "答"} for i in range(500)]
    _write(path, rows, "jsonl")
    tasks = plan_read_tasks(path, task_bytes=997)  # an odd size forces boundaries inside lines
    assert len(tasks) > 10
    got = [r for t in tasks for r in read_task_records(t)]
    assert [r.value["instruction"] for r in got] == [r["instruction"] for r in rows]
    assert [int(r.loc.rsplit(":", 1)[1]) for r in got] == list(range(1, 501))
