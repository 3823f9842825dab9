"""`caregpt export`: merged weights equal base + adapter, the directory stands alone, bad inputs are refused.

No Ray: export runs in one process. The tiny model and adapters with random non-zero LoRA B weights
(tests/adapter_factory.py) stand in for a trained run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from caregpt.config.loader import ConfigError
from caregpt.models.export_cli import main as export_main
from tests.adapter_factory import make_lora_adapter

PROMPTS = ["高血压患者能吃党参吗？", "发烧三天了，体温一直很高，怎么办", "头痛"]


def _logits(model, tokenizer):
    import torch

    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits.float(), batch["attention_mask"].bool()


def _tokenizer(path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.padding_side = "right"
    return tokenizer


def _base_plus_adapter(base, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter)).eval()


def _max_diff(a, b, mask) -> float:
    return float((a - b).abs()[mask].max())


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    path = make_lora_adapter(tiny_model, tmp_path_factory.mktemp("adapter") / "lora")
    (path / "all_results.json").write_text(json.dumps({"train_loss": 1.25, "step": 6}))  # as training writes it
    return path


def test_merged_model_equals_base_plus_adapter_and_loads_with_plain_transformers(tiny_model, adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    # seed flags of CareGPT's export command, plus a shard size small enough to force several shards
    assert export_main(["--model_name_or_path", tiny_model, "--template", "chatml", "--finetuning_type", "lora",
                        "--checkpoint_dir", str(adapter), "--output_dir", str(out), "--export_size", "0.001"]) == 0

    tokenizer = _tokenizer(out)
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    merged_logits, mask = _logits(merged, tokenizer)
    reference, _ = _logits(_base_plus_adapter(tiny_model, adapter), tokenizer)
    base, _ = _logits(AutoModelForCausalLM.from_pretrained(tiny_model).eval(), tokenizer)
    assert _max_diff(merged_logits, reference, mask) < 1e-4
    assert _max_diff(base, reference, mask) > 1e-2  # the adapter really changes the model

    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    assert not [p for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pkl")]
    for name in ("config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja", "caregpt_config.yaml"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "caregpt_export.json").read_text())
    assert manifest["base_model"]["path"] == str(Path(tiny_model))
    assert [a["path"] for a in manifest["adapters"]] == [str(adapter)]
    assert manifest["adapters"][0]["training_config"]["template"] == "chatml"
    assert manifest["adapters"][0]["metrics"] == json.loads((adapter / "all_results.json").read_text())
    assert sorted(s["file"] for s in manifest["shards"]) == shards
    assert manifest["total_bytes"] == sum((out / s).stat().st_size for s in shards)
    assert manifest["dtype"] == "float32" and manifest["template"] == "chatml"
    generation = json.loads((out / "generation_config.json").read_text())
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in generation["eos_token_id"]  # generation stops at the template's end of turn


def test_chat_template_of_export_renders_like_the_training_template(tiny_model, adapter, tmp_path):
    from caregpt.data.templates import get_template

    out = tmp_path / "merged"
    assert export_main(["--model_name_or_path", tiny_model, "--template", "llama2", "--checkpoint_dir", str(adapter), "--output_dir", str(out)]) == 0
    tokenizer = _tokenizer(out)
    messages = [{"role": "system", "content": "你是医生"}, {"role": "user", "content": "头痛"}, {"role": "assistant", "content": "休息"}, {"role": "user", "content": "还有呢"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == get_template("llama2", tokenizer).render(messages, add_generation_prompt=True)


def test_every_named_template_converts_to_equivalent_jinja(tiny_model):
    from caregpt.data.templates import TEMPLATE_NAMES, get_template
    from caregpt.models.chat_jinja import template_to_jinja

    tokenizer = _tokenizer(tiny_model)
    conversations = [
        [{"role": "user", "content": "你好 {user} \"引号\"\n"}],
        [{"role": "system", "content": "  系统 "}, {"role": "user", "content": " 头痛"}, {"role": "assistant", "content": "休息 "}, {"role": "user", "content": "还有呢"}],
        [{"role": "system", "content": ""}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    ]
    for name in TEMPLATE_NAMES:
        template = get_template(name, tokenizer)
        jinja = template_to_jinja(template)
        for messages in conversations:
            for generation_prompt in (False, True) if messages[-1]["role"] == "user" else (False,):
                got = tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False, add_generation_prompt=generation_prompt)
                assert got == template.render(messages, add_generation_prompt=generation_prompt), (name, messages)


def test_refuses_a_non_empty_output_dir_unless_overwrite(tiny_model, adapter, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    argv = ["--model_name_or_path", tiny_model, "--checkpoint_dir", str(adapter), "--output_dir", str(out)]
    assert export_main(argv) == 2
    assert "not empty" in capsys.readouterr().err and (out / "notes.txt").read_text() == "keep me"
    assert export_main([*argv, "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and (out / "caregpt_export.json").is_file()
    # never over its own inputs, even with --overwrite
    assert export_main(["--model_name_or_path", tiny_model, "--checkpoint_dir", str(adapter), "--output_dir", str(adapter), "--overwrite"]) == 2
    assert "would replace the input" in capsys.readouterr().err and (adapter / "adapter_model.safetensors").is_file()


def _other_model(tiny_model: str, out: Path, *, hidden: int | None = None) -> str:
    """Another base: a different width (shapes differ), or the same shapes with other weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if hidden:
        config = AutoConfig.from_pretrained(tiny_model)
        config.hidden_size, config.intermediate_size, config.head_dim = hidden, hidden * 3, hidden // config.num_attention_heads
        model = AutoModelForCausalLM.from_config(config)
    else:
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        torch.manual_seed(7)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.01)
    model.save_pretrained(str(out))
    return str(out)


@pytest.mark.parametrize("difference", ["shapes", "weights"])
def test_adapter_of_another_base_fails_naming_the_file(tiny_model, tmp_path, capsys, difference):
    other = _other_model(tiny_model, tmp_path / "other", hidden=64 if difference == "shapes" else None)
    foreign = make_lora_adapter(other, tmp_path / "foreign")
    code = export_main(["--model_name_or_path", tiny_model, "--checkpoint_dir", str(foreign), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "out").exists()
    if difference == "shapes":
        assert f"{foreign}/adapter_model.safetensors does not fit" in err and "has shape" in err
    else:
        assert f"{foreign}/adapter_config.json" in err and "weights differ" in err
    assert f"--model_name_or_path {other}" in err or other in err


def test_qlora_adapter_merges_into_the_float_base(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = make_lora_adapter(tiny_model, tmp_path / "qlora", quantization_bit=4, seed=3)
    out = tmp_path / "merged"
    # the training config beside the adapter says quantization_bit: 4; export still loads the base in float
    assert export_main(["--model_name_or_path", tiny_model, "--checkpoint_dir", str(adapter), "--output_dir", str(out)]) == 0
    tokenizer = _tokenizer(out)
    merged, mask = _logits(AutoModelForCausalLM.from_pretrained(str(out)).eval(), tokenizer)
    reference, _ = _logits(_base_plus_adapter(tiny_model, adapter), tokenizer)
    assert _max_diff(merged, reference, mask) < 1e-4
    entry = json.loads((out / "caregpt_export.json").read_text())["adapters"][0]
    assert "QLoRA" in entry["note"] and entry["training_config"]["quantization_bit"] == 4


def test_reexport_without_adapters_changes_dtype(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "bf16"
    assert export_main(["--model_name_or_path", tiny_model, "--output_dir", str(out), "--export_dtype", "bfloat16"]) == 0
    assert AutoModelForCausalLM.from_pretrained(str(out)).dtype == torch.bfloat16
    manifest = json.loads((out / "caregpt_export.json").read_text())
    assert manifest["adapters"] == [] and manifest["dtype"] == "bfloat16"
    # no template named: the tokenizer keeps its own chat template, and later runs are told to use it
    assert (out / "chat_template.jinja").read_text() == (Path(tiny_model) / "chat_template.jinja").read_text()
    assert yaml.safe_load((out / "caregpt_config.yaml").read_text())["template"] == "auto"
    assert export_main(["--model_name_or_path", tiny_model, "--output_dir", str(tmp_path / "x"), "--export_dtype", "int3"]) == 2


def test_missing_model_and_output_dir_are_clear_errors(tmp_path, capsys):
    assert export_main(["--model_name_or_path", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert export_main(["--model_name_or_path", str(tmp_path)]) == 2
    assert "output_dir is required" in capsys.readouterr().err
    assert export_main(["--help"]) == 0 and "--export_size" in capsys.readouterr().out


def test_pipeline_export_and_eval_steps_are_typed_calls(tiny_model, adapter, tmp_path):
    """The pipeline runs export / eval as functions on the step's values (no argv round trip)."""
    from caregpt.pipeline.plan import PlannedStep
    from caregpt.pipeline.run import run_eval, run_export

    out = tmp_path / "export"
    values = {"model_name_or_path": tiny_model, "checkpoint_dir": str(adapter), "template": "chatml", "output_dir": str(out),
              "export_size": 0.5}
    run_export(PlannedStep("export", "export", values, out))
    assert (out / "config.json").is_file() and (out / "caregpt_export.json").is_file()
    with pytest.raises(ConfigError, match="unknown config key 'export_sise'.*did you mean 'export_size'"):
        run_export(PlannedStep("export", "export", {**values, "export_sise": 1}, out))
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"prompt": "q", "label": "发热三天", "prediction": "发热三天"}, ensure_ascii=False) + "\n")
    run_eval(PlannedStep("eval", "eval", {"task": "generation", "predictions": str(predictions), "output_dir": str(tmp_path / "e")}, tmp_path / "e"))
    report = json.loads((tmp_path / "e" / "eval_report.json").read_text())
    assert report["metrics"]["bleu-4"] > 99
