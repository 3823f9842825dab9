"""`caregpt eval` end to end: exam accuracy on the sample exam (tests/data) with the tiny model (checked by an
independent scorer), generation metrics from a predictions file, reports, comparison and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from caregpt.config.loader import ConfigError
from caregpt.eval.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.e2e
PER_SUBJECT = 4


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _independent_score(data_file: Path, predictions_file: Path, per_subject: int | None, max_samples: int | None = None):
    """A scorer that shares no code with caregpt: gold letters from the data file, chosen letters from the
    predictions file; right = same set of letters. Returns ({subject: [correct, total]}, ids in order)."""
    records = _jsonl(data_file)
    seen: dict[str, int] = defaultdict(int)
    chosen = []
    for record in records:
        if per_subject is None or seen[record["subject"]] < per_subject:
            seen[record["subject"]] += 1
            chosen.append(record)
    chosen = chosen[:max_samples] if max_samples else chosen
    gold = {r["id"]: (r["subject"], set(r["answer"].replace(",", "").replace("、", ""))) for r in chosen}
    rows = _jsonl(predictions_file)
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        subject, letters = gold[row["id"]]
        tally[subject][1] += 1
        tally[subject][0] += int(row["predicted"] is not None and set(row["predicted"]) == letters)
    return dict(tally), [r["id"] for r in rows], [r["id"] for r in chosen]


def test_choice_likelihood_is_reported_per_subject_and_agrees_with_an_independent_scorer(tiny_model, test_data, tmp_path, capsys):
    data = test_data / "mcq_medical_exam.jsonl"
    out = tmp_path / "cmmlu"
    assert main(["--task", "choice", "--data", str(data), "--model_name_or_path", tiny_model,
                 "--max_per_subject", str(PER_SUBJECT), "--batch_size", "6", "--output_dir", str(out)]) == 0
    report = json.loads((out / "eval_report.json").read_text(encoding="utf-8"))
    tally, predicted_ids, chosen_ids = _independent_score(data, out / "choice_predictions.jsonl", PER_SUBJECT)

    assert predicted_ids == chosen_ids  # every selected question, in file order, once
    subjects = report["details"]["subjects"]
    assert len(subjects) == 9 and set(subjects) == set(tally)
    for name, (correct, total) in tally.items():
        assert (subjects[name]["correct"], subjects[name]["total"]) == (correct, total) == (correct, PER_SUBJECT)
        assert report["metrics"][f"accuracy/{name}"] == round(100 * correct / total, 4)
    all_correct = sum(c for c, _ in tally.values())
    assert report["counts"]["items"] == 9 * PER_SUBJECT and report["counts"]["correct"] == all_correct
    assert report["metrics"]["accuracy"] == round(100 * all_correct / (9 * PER_SUBJECT), 4)
    assert report["counts"]["unparsed"] == 0 and report["details"]["unparsed_ids"] == []  # likelihood always answers
    # every accuracy comes with its baselines: chance and the majority letter of these very items
    golds = [r["answer"] for r in _jsonl(out / "choice_predictions.jsonl")]
    majority = max(sorted(set(golds)), key=golds.count)
    assert report["details"]["majority_letter"] == majority
    assert report["metrics"]["majority_letter_accuracy"] == round(100 * golds.count(majority) / len(golds), 4)
    assert 0 < report["metrics"]["chance_accuracy"] <= 50 and 0 < report["metrics"]["most_common_prediction_share"] <= 100
    page = (out / "eval_report.md").read_text(encoding="utf-8")
    assert all(name in page for name in subjects)
    assert "accuracy" in capsys.readouterr().out


def test_choice_generate_lists_unparsed_ids_and_k_shot_from_a_dev_file(tiny_model, test_data, tmp_path):
    data = test_data / "mcq_medical_exam.jsonl"
    dev = tmp_path / "dev.jsonl"
    dev.write_text("\n".join(json.dumps({**r, "id": "dev-" + r["id"]}, ensure_ascii=False)
                             for r in _jsonl(data)[-3:]) + "\n", encoding="utf-8")
    out = tmp_path / "gen"
    assert main(["--task", "choice", "--data", str(data), "--model_name_or_path", tiny_model, "--method", "generate",
                 "--n-shot", "2", "--dev", str(dev), "--max_samples", "5", "--max_new_tokens", "8",
                 "--output_dir", str(out)]) == 0
    report = json.loads((out / "eval_report.json").read_text(encoding="utf-8"))
    rows = _jsonl(out / "choice_predictions.jsonl")
    assert [r["shots"] for r in rows] == [2] * 5 and all(isinstance(r["output"], str) for r in rows)
    assert report["details"]["unparsed_ids"] == [r["id"] for r in rows if r["predicted"] is None]
    assert report["counts"]["unparsed"] == len(report["details"]["unparsed_ids"])
    tally, _, _ = _independent_score(data, out / "choice_predictions.jsonl", None, max_samples=5)
    assert report["counts"]["correct"] == sum(c for c, _ in tally.values())


def test_batch_size_does_not_change_the_answers(tiny_model, test_data):
    from caregpt.eval.choice import ChoiceSettings, load_eval_model, score_items
    from caregpt.eval.choice_data import load_items, subset

    items = load_items(test_data / "mcq_medical_exam.jsonl")
    picked = subset(items, max_per_subject=1)
    model, tokenizer, template = load_eval_model(tiny_model, template="chatml")
    one = score_items(model, tokenizer, template, picked, items, ChoiceSettings(batch_size=1, n_shot=1))
    many = score_items(model, tokenizer, template, picked, items, ChoiceSettings(batch_size=5, n_shot=1))
    assert [r["predicted"] for r in one] == [r["predicted"] for r in many]
    for a, b in zip(one, many):
        assert a["letter_logprobs"] == pytest.approx(b["letter_logprobs"], abs=1e-3)


def _adapter(base_dir: str, out: Path, hidden: int | None = None) -> Path:
    """A random (non-zero) LoRA adapter on base_dir, or on a narrower copy of its architecture."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if hidden is None:
        model = AutoModelForCausalLM.from_pretrained(base_dir)
    else:
        config = LlamaConfig.from_pretrained(base_dir)
        config.hidden_size, config.intermediate_size = hidden, 2 * hidden
        model = LlamaForCausalLM(config)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(str(out))
    return out


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft vs transformers 5.2x
def test_adapter_changes_the_scores_and_a_foreign_adapter_is_refused(tiny_model, test_data, tmp_path):
    data = str(test_data / "mcq_medical_exam.jsonl")
    common = ["--task", "choice", "--data", data, "--model_name_or_path", tiny_model, "--max_samples", "3"]
    assert main([*common, "--output_dir", str(tmp_path / "base")]) == 0
    adapter = _adapter(tiny_model, tmp_path / "lora")
    assert main([*common, "--checkpoint_dir", str(adapter), "--output_dir", str(tmp_path / "lora-run")]) == 0
    base_rows = _jsonl(tmp_path / "base" / "choice_predictions.jsonl")
    lora_rows = _jsonl(tmp_path / "lora-run" / "choice_predictions.jsonl")
    assert [r["letter_logprobs"] for r in base_rows] != [r["letter_logprobs"] for r in lora_rows]

    # an adapter from `caregpt train` records its base model and template: eval finds them there
    (adapter / "caregpt_config.yaml").write_text(f"model_name_or_path: {tiny_model}\ntemplate: chatml\n", encoding="utf-8")
    assert main(["--task", "choice", "--data", data, "--max_samples", "3", "--checkpoint_dir", str(adapter),
                 "--output_dir", str(tmp_path / "recorded")]) == 0
    config = json.loads((tmp_path / "recorded" / "eval_report.json").read_text(encoding="utf-8"))["config"]
    assert (config["model_name_or_path"], config["template"]) == (tiny_model, "chatml")

    foreign = _adapter(tiny_model, tmp_path / "foreign", hidden=64)
    with pytest.raises(ConfigError) as info:
        main([*common, "--checkpoint_dir", str(foreign), "--output_dir", str(tmp_path / "x")])
    assert str(foreign) in str(info.value) and "does not fit the base model" in str(info.value)


def test_bad_exam_record_fails_before_any_model_is_loaded(tmp_path):
    bad = tmp_path / "exam.jsonl"
    bad.write_text(json.dumps({"question": "q", "options": {"A": "x", "B": "y", "C": "z", "D": "w"}, "answer": "A"}) + "\n"
                   + json.dumps({"question": "q", "options": {"A": "x", "B": "y", "C": "z", "D": "w"}, "answer": "E"}) + "\n")
    with pytest.raises(ConfigError) as info:
        main(["--task", "choice", "--data", str(bad), "--model_name_or_path", str(tmp_path / "no-model")])
    assert f"{bad}:2" in str(info.value) and "'answer'" in str(info.value) and "A, B, C, D" in str(info.value)


def _predictions(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_generation_eval_from_a_predictions_file(tmp_path, capsys):
    text = "患者头痛发热三天，建议血常规检查。"
    preds = _predictions(tmp_path / "pred" / "generated_predictions.jsonl", [
        {"prompt": "p1", "label": text, "prediction": text},      # 100 on every metric
        {"prompt": "p2", "label": "头痛发热", "prediction": "咳嗽流涕"},  # 0: nothing shared
        {"prompt": "p3", "label": text, "prediction": ""},         # 0: empty
    ])
    assert main(["--task", "generation", "--predictions", str(preds)]) == 0
    report = json.loads((preds.parent / "eval_report.json").read_text(encoding="utf-8"))
    assert report["metrics"] == {k: round(100 / 3, 4) for k in ("bleu-4", "rouge-1", "rouge-2", "rouge-l")}
    assert report["counts"] == {"examples": 3, "empty_predictions": 1}
    per = _jsonl(preds.parent / "generation_scores.jsonl")
    assert [r["line"] for r in per] == [1, 2, 3] and per[0]["bleu-4"] == 100.0 and per[2]["rouge-l"] == 0.0
    assert "rouge-l" in capsys.readouterr().out


def test_prediction_file_with_a_missing_field_names_file_line_and_field(tmp_path, capsys):
    preds = _predictions(tmp_path / "p.jsonl", [{"prompt": "a", "label": "b", "prediction": "c"}, {"prompt": "a", "label": "b"}])
    with pytest.raises(ConfigError, match=rf"{preds}:2: missing field\(s\) prediction"):
        main(["--task", "generation", "--predictions", str(preds)])
    # the same through the job entry point: one line on stderr, exit 2, no traceback
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "eval.py"), "--task", "generation", "--predictions", str(preds)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"{preds}:2: missing field(s) prediction" in done.stderr
    assert "Traceback" not in done.stderr


def test_compare_puts_runs_side_by_side(tmp_path, capsys):
    runs = []
    for name, prediction in (("good", "患者头痛发热三天"), ("bad", "咳嗽")):
        preds = _predictions(tmp_path / name / "generated_predictions.jsonl",
                             [{"prompt": "p", "label": "患者头痛发热三天", "prediction": prediction}])
        assert main(["--task", "generation", "--predictions", str(preds)]) == 0
        runs.append(str(preds.parent))
    capsys.readouterr()
    assert main(["compare", *runs]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "|  | good | bad |"
    bleu = next(line for line in table if line.startswith("| bleu-4 |"))
    assert bleu.split("|")[2].strip() == "**100.0**" and "**" not in bleu.split("|")[3]
    with pytest.raises(ConfigError, match="no eval_report.json"):
        main(["compare", str(tmp_path / "missing")])


def test_help_explains_every_option(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--task", "--predictions", "--data", "--model_name_or_path", "--checkpoint_dir", "--template",
                   "--method", "--n_shot", "--dev", "--max_samples", "--max_per_subject", "--batch_size",
                   "--max_new_tokens", "--cutoff_len", "--device", "--output_dir", "compare"):
        assert option in text
    with pytest.raises(ConfigError, match="did you mean '--n_shot'"):
        main(["--task", "choice", "--data", "x", "--nshot", "3"])
