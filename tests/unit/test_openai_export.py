"""OpenAI chat fine-tuning export and upload: multi-turn records become valid chat JSONL, bad ones are named by line,
and `caregpt openai-finetune` uploads and starts a job against our own stand-in server (real HTTP, real client)."""

from __future__ import annotations

import json

import pytest

from caregpt.config.loader import ConfigError
from caregpt.data.openai_export import (
    MIN_EXAMPLES,
    TokenCounter,
    export_openai_chat,
    validate_chat_file,
    validate_example,
)
from caregpt.data.openai_export_cli import main as export_main
from caregpt.data.openai_finetune import main as finetune_main
from tests.conftest import SAMPLE_DATA
from tests.openai_fault_server import FineTuneStandIn, serve


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_registered_multiturn_datasets_become_valid_chat_examples(tmp_path):
    out = tmp_path / "chat.jsonl"
    report = export_openai_chat(["medical_sft", "medical_sharegpt"], str(SAMPLE_DATA), out)
    examples = _lines(out)
    sources = [json.loads(line) for line in (SAMPLE_DATA / "medical_sft.jsonl").read_text(encoding="utf-8").splitlines()]
    sharegpt = json.loads((SAMPLE_DATA / "medical_sharegpt.json").read_text(encoding="utf-8"))
    assert report.rejected == 0 and report.exported == len(examples) == len(sources) + len(sharegpt)
    for source, example in zip(sources, examples):
        history = source.get("history") or []
        assert len(example["messages"]) == 2 * len(history) + 2  # every earlier turn is kept, in order
        user = source["instruction"] + ("\n" + source["input"] if source["input"].strip() else "")
        assert example["messages"][-2] == {"role": "user", "content": user}
        assert example["messages"][-1] == {"role": "assistant", "content": source["output"]}
    for record, example in zip(sharegpt, examples[len(sources):]):
        turns = [m for m in example["messages"] if m["role"] != "system"]
        assert [m["content"] for m in turns] == [t["value"] for t in record["conversations"]]
        if record.get("system"):
            assert example["messages"][0] == {"role": "system", "content": record["system"]}
    assert any(len(e["messages"]) >= 5 for e in examples[len(sources):])
    checked = validate_chat_file(out)
    assert checked.rejected == 0 and not checked.file_errors and checked.exported == report.exported


def test_malformed_records_are_reported_with_file_and_line(tmp_path):
    data = tmp_path / "mixed.jsonl"
    good = {"instruction": "头痛怎么办", "input": "", "output": "注意休息，必要时就医。", "history": [["你好", "您好，请讲"]]}
    lines = [json.dumps(good, ensure_ascii=False)] * MIN_EXAMPLES + [
        "{not json",
        json.dumps({"instruction": "咳嗽", "input": "", "output": ""}, ensure_ascii=False),
        json.dumps({"instruction": "发热", "output": "多喝水", "history": "not a list"}, ensure_ascii=False),
    ]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "chat.jsonl"
    report = export_openai_chat([str(data)], str(tmp_path), out)
    assert report.exported == MIN_EXAMPLES and report.rejected == 3
    where = [example.split(": ", 1)[0] for example in report.rejected_examples]
    assert where == [f"{data}:11", f"{data}:12", f"{data}:13"]
    assert "invalid JSON" in report.rejected_examples[0] and "is empty" in report.rejected_examples[1]
    assert len(_lines(out)) == MIN_EXAMPLES
    assert export_main(["--dataset", str(data), "--dataset_dir", str(tmp_path), "--output", str(tmp_path / "b.jsonl")]) == 1


@pytest.mark.parametrize("example, problem", [
    ([], "expected a JSON object"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}, "role 'bot'"),
    ({"messages": [{"role": "user", "content": "hi", "extra": 1}, {"role": "assistant", "content": "x"}]}, "unrecognised key"),
    ({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]}, "empty or non-string"),
    ({"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}, "'user' was expected"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}, "alternate"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}, "end with an assistant"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}]}, "only come first"),
    ({"messages": [{"role": "user", "content": "a", "weight": 0}, {"role": "assistant", "content": "b"}]}, "weight"),
])
def test_each_service_rule_is_checked(example, problem):
    problems, _ = validate_example(example, TokenCounter(), 65536)
    assert any(problem in p for p in problems), problems


def test_token_limit_and_minimum_file_size(tmp_path):
    counter = TokenCounter()
    long_text = "发热" * 600
    example = {"messages": [{"role": "user", "content": long_text}, {"role": "assistant", "content": "好"}]}
    tokens = counter.example_tokens(example["messages"])
    assert tokens >= len(long_text)  # the estimate never counts fewer tokens than Chinese characters
    assert validate_example(example, counter, tokens)[0] == []
    assert "exceed" in validate_example(example, counter, tokens - 1)[0][0]
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps(example, ensure_ascii=False) + "\n", encoding="utf-8")
    report = validate_chat_file(small)
    assert report.rejected == 0 and report.file_errors and str(MIN_EXAMPLES) in report.file_errors[0]
    with pytest.raises(ConfigError, match="could not be loaded"):
        TokenCounter(str(tmp_path / "no-such-tokenizer"))


def test_wrong_kind_and_history_weights(tmp_path):
    assert export_main(["--dataset", "medical_pref", "--dataset_dir", str(SAMPLE_DATA), "--output", str(tmp_path / "p.jsonl")]) == 2
    out = tmp_path / "last.jsonl"
    assert export_main(["--dataset", "medical_sharegpt", "--dataset_dir", str(SAMPLE_DATA), "--output", str(out), "--last_turn_only"]) == 0
    for example in _lines(out):
        assistants = [m for m in example["messages"] if m["role"] == "assistant"]
        assert "weight" not in assistants[-1] and all(m["weight"] == 0 for m in assistants[:-1])


def test_openai_finetune_uploads_and_starts_a_job(tmp_path, monkeypatch, capsys):
    train = tmp_path / "train.jsonl"
    assert export_main(["--dataset", "medical_sft", "--dataset_dir", str(SAMPLE_DATA), "--output", str(train)]) == 0
    standin = FineTuneStandIn(api_key="sk-test-standin")
    monkeypatch.setenv("CAREGPT_FT_KEY", "sk-test-standin")
    with serve(standin.app()) as base_url:
        code = finetune_main(["--training_file", str(train), "--validation_file", str(train), "--model", "gpt-4o-mini-2024-07-18",
                              "--base_url", base_url, "--api_key_env", "CAREGPT_FT_KEY", "--suffix", "caregpt", "--n_epochs", "2",
                              "--wait", "--poll_interval", "0.01"])
        out = capsys.readouterr().out
        assert code == 0
        last = json.loads(out.strip().splitlines()[-1])["job"]
        assert last["status"] == "succeeded" and last["fine_tuned_model"].startswith("ft:gpt-4o-mini-2024-07-18:caregpt")
        assert len(standin.files) == 2 and all(f["purpose"] == "fine-tune" for f in standin.files.values())
        uploaded = next(iter(standin.files.values()))["content"]
        assert uploaded == train.read_bytes()  # the file arrives byte for byte
        (job,) = standin.jobs.values()
        assert job["request"]["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2
        assert job["request"]["validation_file"] in standin.files
        assert "sk-test-standin" not in out

        monkeypatch.setenv("CAREGPT_FT_KEY", "sk-wrong")
        assert finetune_main(["--training_file", str(train), "--model", "m", "--base_url", base_url, "--api_key_env", "CAREGPT_FT_KEY"]) == 2
        assert "HTTP 401" in capsys.readouterr().err

        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"messages": [{"role": "user", "content": "x"}]}\n', encoding="utf-8")
        monkeypatch.setenv("CAREGPT_FT_KEY", "sk-test-standin")
        assert finetune_main(["--training_file", str(bad), "--model", "m", "--base_url", base_url, "--api_key_env", "CAREGPT_FT_KEY"]) == 2
        assert f"{bad}:1" in capsys.readouterr().err
        assert len(standin.files) == 2  # refused locally: nothing was uploaded
