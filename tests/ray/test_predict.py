"""`caregpt predict` on a real local Ray: a pool of model actors, greedy answers, every record accounted for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caregpt.eval.predict_cli import main as predict_main
from tests.adapter_factory import make_lora_adapter

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TOYHOM = "sft_toyhom_im_department.jsonl"
MULTITURN = "sft_cmtmedqa_multiturn.jsonl"
INVALID_LINE = 11
MAX_SAMPLES = 13


@pytest.fixture(scope="module")
def eval_data(test_data, tmp_path_factory) -> Path:
    """10 single-turn records, one without an answer (line 11), then 3 multi-turn ones, registered by name."""
    root = tmp_path_factory.mktemp("eval_data")
    lines = (test_data / TOYHOM).read_text(encoding="utf-8").splitlines()[:10]
    lines.append(json.dumps({"instruction": "头痛怎么办", "input": "", "history": [], "id": "no-answer"}, ensure_ascii=False))
    lines += [line for line in (test_data / MULTITURN).read_text(encoding="utf-8").splitlines() if json.loads(line)["history"]][:3]
    (root / "eval.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    columns = {"prompt": "instruction", "query": "input", "response": "output", "history": "history"}
    (root / "dataset_info.json").write_text(json.dumps({"medeval": {"file_name": "eval.jsonl", "columns": columns}}))
    return root


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    return make_lora_adapter(tiny_model, tmp_path_factory.mktemp("adapter") / "lora")


def _argv(model: str, adapter: Path, data: Path, out: Path, workers: int, *extra: str) -> list[str]:
    # CareGPT's predict command, with the template taken from the adapter's caregpt_config.yaml
    return [
        "--stage", "sft", "--model_name_or_path", model, "--checkpoint_dir", str(adapter), "--dataset", "medeval",
        "--dataset_dir", str(data), "--do_predict", "--predict_with_generate", "--max_samples", str(MAX_SAMPLES),
        "--per_device_eval_batch_size", "3", "--max_new_tokens", "16", "--output_dir", str(out),
        "--num_workers", str(workers), *extra,
    ]


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def test_two_actors_predict_exactly_what_one_does(ray_local, tiny_model, adapter, eval_data, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    # one invalid record: predictions are written, the run says so (exit 1) unless --skip_invalid
    assert predict_main(_argv(tiny_model, adapter, eval_data, two, 2, "--do_eval")) == 1
    assert predict_main(_argv(tiny_model, adapter, eval_data, one, 1, "--skip_invalid")) == 0
    assert _lines(two) == _lines(one)  # greedy decoding: same answers, same order, any actor count

    sources = [json.loads(line) for line in (eval_data / "eval.jsonl").read_text(encoding="utf-8").splitlines()[:MAX_SAMPLES]]
    answered = [(n, r) for n, r in enumerate(sources, start=1) if r.get("output")]
    lines = _lines(two)
    assert [line["label"] for line in lines] == [r["output"] for _, r in answered]
    assert [line["loc"].rsplit(":", 1)[1] for line in lines] == [str(n) for n, _ in answered]
    assert [line["id"] for line in lines] == [r["id"] for _, r in answered]
    assert all(line["department"] == r["department"] for line, (_, r) in zip(lines, answered))
    assert all(line["prompt"].endswith("<|im_start|>assistant\n") for line in lines)  # chatml, from the adapter
    assert any(line["prediction"] for line in lines)
    assert answered[-1][1]["history"][0][0] in lines[-1]["prompt"]  # multi-turn prompts carry their history

    results = json.loads((two / "predict_results.json").read_text())
    assert results["records"] == MAX_SAMPLES and results["invalid"] == 1 and results["predicted"] == len(answered)
    assert results["invalid_examples"][0]["loc"].endswith(f"eval.jsonl:{INVALID_LINE}")
    assert "output" in results["invalid_examples"][0]["error"]
    for key in ("predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l"):
        assert 0.0 <= results[key] <= 100.0
    assert "predict_bleu-4" not in json.loads((one / "predict_results.json").read_text())  # no --do_eval there


def test_existing_predictions_are_kept_unless_overwrite(ray_local, tiny_model, adapter, eval_data, tmp_path, capsys):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "generated_predictions.jsonl").write_text("earlier run\n")
    assert predict_main(_argv(tiny_model, adapter, eval_data, out, 1)) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert (out / "generated_predictions.jsonl").read_text() == "earlier run\n"


def test_bad_model_or_adapter_fails_before_ray_with_the_file_named(tiny_model, eval_data, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model)
    config.num_hidden_layers = 3  # one layer more: the adapter for it targets a module the tiny model lacks
    other = tmp_path / "deeper"
    AutoModelForCausalLM.from_config(config).save_pretrained(str(other))
    foreign = make_lora_adapter(other, tmp_path / "foreign")
    assert predict_main(_argv(tiny_model, foreign, eval_data, tmp_path / "out", 1)) == 2
    err = capsys.readouterr().err
    assert f"{foreign}/adapter_model.safetensors does not fit" in err and "model.layers.2" in err

    assert predict_main(_argv(str(tmp_path / "missing"), foreign, eval_data, tmp_path / "out", 1)) == 2
    assert "does not exist" in capsys.readouterr().err
    assert predict_main(["--help"]) == 0 and "--do_sample" in capsys.readouterr().out
