"""Alignment stages on a real local Ray Train: reward model and DPO (PPO has its own module)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from caregpt.config.loader import ConfigError, load_config
from caregpt.train.launch import run_training
from tests.conftest import SAMPLE_DATA

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _pairs_registry(tmp_path: Path, test_data: Path) -> Path:
    """Our sample preference pairs plus the MedicalGPT pairs of tests/data, in one registry."""
    root = tmp_path / "pref"
    root.mkdir(exist_ok=True)
    (root / "dataset_info.json").write_text(json.dumps({
        "ours": {"file_name": str(SAMPLE_DATA / "medical_pref.jsonl"), "ranking": True},
        "medicalgpt": {"file_name": str(test_data / "pref_medicalgpt_medical_reward.jsonl"), "ranking": True},
        "sft": {"file_name": str(SAMPLE_DATA / "medical_sft.jsonl")},
    }))
    return root


def _config(tmp_path, model, registry, **overrides):
    values = {
        "model_name_or_path": model, "dataset": "ours,medicalgpt", "dataset_dir": str(registry), "template": "chatml",
        "cutoff_len": 256, "per_device_train_batch_size": 8, "logging_steps": 2, "save_steps": 100,
        "output_dir": str(tmp_path / "out"), "tokenized_path": str(registry / f"tok-{overrides.get('stage', 'x')}"),
    }
    values.update(overrides)
    return load_config(None, {k: str(v) for k, v in values.items()})


def _log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines() if line.strip()]


def test_reward_model_learns_the_preferences(ray_local, tiny_model, test_data, tmp_path):
    registry = _pairs_registry(tmp_path, test_data)
    outcome = run_training(_config(tmp_path, tiny_model, registry, stage="rm", finetuning_type="lora", lora_target="all", learning_rate=3e-3, max_steps=40))
    metrics = outcome.metrics
    assert metrics["records_used"] == 150
    assert metrics["train_pairs_accuracy"] > 0.8  # chance is 0.5
    first = next(e for e in _log(outcome.output_dir) if "accuracy" in e)
    assert metrics["train_pairs_margin"] > first["margin"]
    # saved as a standalone reward model that loads by path
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(outcome.output_dir)
    assert model.config.num_labels == 1 and model.config.architectures[0].endswith("ForSequenceClassification")


def test_seed_dpo_command_after_sft(ray_local, tiny_model, test_data, tmp_path):
    registry = _pairs_registry(tmp_path, test_data)
    # the SFT adapter DPO starts from: a small LoRA made directly (SFT training itself is tests/ray/test_train.py's)
    from tests.adapter_factory import make_lora_adapter

    sft_dir = make_lora_adapter(tiny_model, tmp_path / "sft" / "out", seed=3, template="chatml", scale=0.02)
    # CareGPT's DPO command: --checkpoint_dir the SFT adapter, --resume_lora_training False
    argv = shlex.split(f"""--stage dpo --model_name_or_path {tiny_model} --do_train --dataset ours,medicalgpt --dataset_dir {registry}
        --template chatml --finetuning_type lora --lora_target q_proj,v_proj --resume_lora_training False
        --checkpoint_dir {sft_dir} --output_dir {tmp_path / 'dpo'} --per_device_train_batch_size 2
        --gradient_accumulation_steps 4 --lr_scheduler_type cosine --logging_steps 2 --save_steps 1000
        --learning_rate 1e-2 --max_steps 16 --plot_loss --fp16 --cutoff_len 256""")
    # `caregpt train ARGV` in this process, on the session's Ray (the CLI as a subprocess: tests/e2e/test_seed_commands.py)
    from caregpt.cli import cmd_train

    assert cmd_train(argv) == 0
    log = [e for e in _log(tmp_path / "dpo") if "rewards_margin" in e]
    # batches differ a lot (our sample pairs are easy, MedicalGPT's are hard: logged margins swing 0.03 <-> 1.0),
    # so one logged step says little: the later half of the run must separate the pairs clearly better
    margins = [e["rewards_margin"] for e in log]
    half = len(margins) // 2
    assert sum(margins[half:]) / (len(margins) - half) > sum(margins[:half]) / half + 0.1, margins
    assert log[0]["loss"] < 0.8  # a mean per pair (about log 2 at the start), not a sum over accumulation steps
    results = json.loads((tmp_path / "dpo" / "all_results.json").read_text())
    assert results["train_pairs_rewards_accuracy"] > 0.6
    # the DPO adapter loads on the base model and generates
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "dpo")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "dpo").eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "发烧怎么办"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]


@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_instruction_data_is_refused_for_pairwise_stages(tiny_model, test_data, tmp_path, stage):
    registry = _pairs_registry(tmp_path, test_data)
    with pytest.raises(ConfigError, match=rf"stage '{stage}' needs preference pairs"):
        run_training(_config(tmp_path, tiny_model, registry, stage=stage, dataset="sft"))
