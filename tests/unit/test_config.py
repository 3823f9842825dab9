"""Config loading: the seed's flags, YAML precedence, and errors that name the key and a fix."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml

from caregpt.config.help import options_help
from caregpt.config.loader import ConfigError, config_from_json, config_to_json, load_config, load_from_argv, save_resolved
from caregpt.config.specs import GROUPS

# The LLaMA-2 QLoRA SFT command of the CareGPT README, program name swapped.
SEED_SFT = """
    --stage sft --model_name_or_path meta-llama/Llama-2-7b-chat-hf --do_train --dataset mm,hm
    --template llama2 --finetuning_type lora --quantization_bit 4 --lora_target q_proj,v_proj
    --output_dir path_to_sft_checkpoint --overwrite_cache --per_device_train_batch_size 4
    --gradient_accumulation_steps 4 --lr_scheduler_type cosine --logging_steps 10 --save_steps 1000
    --learning_rate 5e-5 --num_train_epochs 3.0 --plot_loss --fp16
"""
SEED_DPO = """
    --stage dpo --model_name_or_path path_to_llama_model --do_train --dataset comparison_gpt4_zh
    --template default --finetuning_type lora --lora_target q_proj,v_proj --resume_lora_training False
    --checkpoint_dir path_to_sft_checkpoint --output_dir path_to_dpo_checkpoint --per_device_train_batch_size 2
    --gradient_accumulation_steps 4 --lr_scheduler_type cosine --logging_steps 10 --save_steps 1000
    --learning_rate 1e-5 --num_train_epochs 1.0 --plot_loss --fp16
"""


def test_seed_sft_command_parses_with_types():
    config = load_from_argv(shlex.split(SEED_SFT))
    assert config.finetune.stage == "sft"
    assert config.data.dataset == ["mm", "hm"]
    assert config.finetune.lora_target == ["q_proj", "v_proj"]
    assert config.model.quantization_bit == 4
    assert config.train.learning_rate == pytest.approx(5e-5)
    assert config.train.num_train_epochs == 3.0
    assert config.train.plot_loss is True and config.train.fp16 is True
    assert config.data.overwrite_cache is True
    assert config.train.gradient_accumulation_steps == 4


def test_seed_dpo_command_parses():
    config = load_from_argv(shlex.split(SEED_DPO))
    assert config.finetune.stage == "dpo"
    assert config.finetune.resume_lora_training is False
    assert config.model.checkpoint_dir == ["path_to_sft_checkpoint"]


def test_yaml_then_flags_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"learning_rate": "1e-4", "lora_rank": 16, "dataset": ["a", "b"], "cutoff_len": 256}))
    config = load_from_argv([str(path), "--lora_rank", "32", "cutoff_len=512"])
    assert config.train.learning_rate == pytest.approx(1e-4)  # YAML's `1e-4` is a string; still a float here
    assert config.finetune.lora_rank == 32  # flag beats YAML
    assert config.data.cutoff_len == 512  # key=value form
    assert config.data.dataset == ["a", "b"]


def test_lora_alpha_defaults_to_twice_rank():
    assert load_config(None, {"lora_rank": "16"}).finetune.effective_lora_alpha == 32
    assert load_config(None, {"lora_rank": "16", "lora_alpha": "8"}).finetune.effective_lora_alpha == 8


def test_unknown_key_names_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"'learning_rat'.*command line.*did you mean 'learning_rate'"):
        load_from_argv(["--learning_rat", "1e-4"])
    path = tmp_path / "bad.yaml"
    path.write_text("lora_rnak: 8\n")
    with pytest.raises(ConfigError, match=rf"'lora_rnak'.*{path.name}.*'lora_rank'"):
        load_from_argv([str(path)])


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--stage", "sfx"], r"stage='sfx'.*must be one of 'pt', 'sft', 'rm', 'dpo' or 'ppo'"),
        (["--lora_rank", "x"], r"lora_rank='x'.*integer"),
        (["--lora_rank", "0"], r"lora_rank='0'.*positive"),
        (["--quantization_bit", "3"], r"quantization_bit='3'.*4 or 8"),
        (["--fp16", "--bf16"], r"fp16 and bf16 are mutually exclusive"),
        (["--cutoff_len", "4"], r"cutoff_len='4'.*at least 8"),
    ],
)
def test_bad_values_are_named(argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_from_argv(argv)


def test_stray_positional_and_two_yamls_are_refused():
    with pytest.raises(ConfigError, match="unexpected argument"):
        load_from_argv(["train.json"])
    with pytest.raises(ConfigError, match="one config file at a time"):
        load_from_argv(["a.yaml", "b.yaml"])


def test_missing_or_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_from_argv([str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_from_argv([str(bad)])


def test_resolved_config_round_trips(tmp_path):
    config = load_from_argv(shlex.split(SEED_SFT) + ["--resources_per_worker", '{"CPU": 2}'])
    assert config_from_json(config_to_json(config)) == config
    written = yaml.safe_load(save_resolved(config, tmp_path).read_text())
    assert written["quantization_bit"] == 4 and written["resources_per_worker"] == {"CPU": 2.0}
    assert json.loads(config_to_json(config))["dataset"] == ["mm", "hm"]


def test_every_option_is_documented_in_help():
    text = options_help()
    for spec in GROUPS.values():
        for name, field in spec.model_fields.items():
            assert field.description, f"{name} has no docstring"
            assert f"--{name} " in text
