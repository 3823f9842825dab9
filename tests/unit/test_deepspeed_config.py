"""Built ZeRO configs have the expected shape, and the real HF + DeepSpeed config code accepts them."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from caregpt.config.deepspeed import ALLGATHER_BUCKET_SIZE, build_deepspeed_config, zero_stage_for
from caregpt.config.loader import ConfigError

FP16_OFF = {
    "enabled": False,
    "loss_scale": 0,
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "min_loss_scale": 1,
}
BATCH_AUTO = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
}


@pytest.fixture(autouse=True)
def _forget_global_ds_config():
    # HfDeepSpeedConfig registers itself module-wide; left behind, later from_pretrained calls in
    # the same process would build models under ZeRO-3 init.
    yield
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def test_none_means_no_deepspeed():
    assert build_deepspeed_config(None, fp16=False, bf16=False) is None


def test_stage2_structure():
    assert build_deepspeed_config("2", fp16=False, bf16=False) == {
        **BATCH_AUTO,
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "allgather_bucket_size": ALLGATHER_BUCKET_SIZE,
        },
        "fp16": FP16_OFF,
        "bf16": {"enabled": False},
    }
    assert ALLGATHER_BUCKET_SIZE == 500_000_000


def test_stage3_structure():
    assert build_deepspeed_config("3", fp16=False, bf16=False) == {
        **BATCH_AUTO,
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "fp16": FP16_OFF,
        "bf16": {"enabled": False},
    }


def test_precision_flags():
    fp16 = build_deepspeed_config("2", fp16=True, bf16=False)
    assert fp16["fp16"] == {**FP16_OFF, "enabled": True} and fp16["bf16"] == {"enabled": False}
    bf16 = build_deepspeed_config("3", fp16=False, bf16=True)
    assert bf16["fp16"]["enabled"] is False and bf16["bf16"] == {"enabled": True}
    with pytest.raises(ValueError, match="mutually exclusive"):
        build_deepspeed_config("2", fp16=True, bf16=True)


def test_cpu_offload():
    zero2 = build_deepspeed_config("2", fp16=False, bf16=True, offload="cpu")["zero_optimization"]
    assert zero2["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert "offload_param" not in zero2  # ZeRO-2 does not partition parameters, so none to offload
    zero3 = build_deepspeed_config("3", fp16=False, bf16=True, offload="cpu")["zero_optimization"]
    assert zero3["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero3["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert "offload_optimizer" not in build_deepspeed_config("3", fp16=False, bf16=True)["zero_optimization"]
    with pytest.raises(ValueError, match="offload='nvme' is not supported"):
        build_deepspeed_config("3", fp16=False, bf16=True, offload="nvme")


def test_other_stage_numbers_are_refused():
    with pytest.raises(ConfigError, match="deepspeed='1': the built ZeRO stages are 2 and 3"):
        build_deepspeed_config("1", fp16=False, bf16=False)


def test_json_path_is_loaded_as_is(tmp_path):
    user = {"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": "auto"}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user), encoding="utf-8")
    assert build_deepspeed_config(str(path), fp16=True, bf16=False) == user


def test_json_path_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=f"deepspeed config file not found: {re.escape(str(missing))}"):
        build_deepspeed_config(str(missing), fp16=False, bf16=False)

    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 2,}}', encoding="utf-8")
    with pytest.raises(ConfigError, match=f"deepspeed config {re.escape(str(bad))}: not valid JSON: .*line 1"):
        build_deepspeed_config(str(bad), fp16=False, bf16=False)

    array = tmp_path / "array.json"
    array.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{re.escape(str(array))}: expected a JSON object .* got list"):
        build_deepspeed_config(str(array), fp16=False, bf16=False)

    good = tmp_path / "good.json"
    good.write_text("{}", encoding="utf-8")
    # a user's file is returned untouched, so an offload request would silently vanish
    with pytest.raises(ConfigError, match="applies to built stages only"):
        build_deepspeed_config(str(good), fp16=False, bf16=False, offload="cpu")


def test_hf_deepspeed_config_reads_built_config():
    from transformers.integrations import HfDeepSpeedConfig

    ds = HfDeepSpeedConfig(build_deepspeed_config("3", fp16=False, bf16=True, offload="cpu"))
    assert ds.is_zero3() and ds.is_offload() and ds.get_value("zero_optimization.stage") == 3
    ds2 = HfDeepSpeedConfig(build_deepspeed_config("2", fp16=False, bf16=True))
    assert ds2.is_zero2() and not ds2.is_offload()


@pytest.mark.parametrize("stage,offload", [("2", None), ("3", None), ("3", "cpu")])
def test_training_arguments_fill_auto_values(tmp_path, stage, offload):
    import torch
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments

    cfg = build_deepspeed_config(stage, fp16=False, bf16=True, offload=offload)
    args = TrainingArguments(
        output_dir=str(tmp_path), deepspeed=cfg, per_device_train_batch_size=2, gradient_accumulation_steps=4,
        use_cpu=True, bf16=True, report_to="none",
    )
    ds = args.hf_deepspeed_config
    # TrainingArguments.__post_init__ already ran trainer_config_process; running it again is a no-op
    ds.trainer_config_process(args)
    assert ds.config["train_micro_batch_size_per_gpu"] == 2
    assert ds.config["gradient_accumulation_steps"] == 4
    assert ds.config["train_batch_size"] == 2 * 4 * args.world_size
    assert ds.config["gradient_clipping"] == args.max_grad_norm
    assert ds.dtype() == torch.bfloat16 and ds.mismatches == []
    assert cfg["train_batch_size"] == "auto"  # HF works on a copy: one built config serves many runs

    # The Trainer finalizes once the model exists; the bucket sizes come from its hidden size.
    ds.trainer_config_finalize(args, SimpleNamespace(config=SimpleNamespace(hidden_size=64)), 10)
    zero = ds.config["zero_optimization"]
    assert zero["reduce_bucket_size"] == 64 * 64
    if stage == "3":
        assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64)
        assert zero["stage3_param_persistence_threshold"] == 10 * 64

    # DeepSpeed's own pydantic models forbid unknown keys: a misspelt key would fail here.
    parsed = DeepSpeedConfig(ds.config)
    assert parsed.zero_optimization_stage == int(stage)
    assert parsed.train_batch_size == 8 * args.world_size
    assert parsed.bfloat16_config.enabled and not parsed.float16_config.enabled
    assert parsed.zero_config.gather_16bit_weights_on_model_save is (stage == "3")
    assert (parsed.zero_config.offload_optimizer is not None) is (offload == "cpu")


def test_precision_mismatch_is_reported_by_hf(tmp_path):
    from transformers import TrainingArguments

    # fp16 is written explicitly, so it must agree with the Trainer flag; HF catches a disagreement
    cfg = build_deepspeed_config("2", fp16=True, bf16=False)
    args = TrainingArguments(output_dir=str(tmp_path), deepspeed=cfg, use_cpu=True, report_to="none")
    assert any("fp16.enabled" in m for m in args.hf_deepspeed_config.mismatches)
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=8))
    with pytest.raises(ValueError, match="mismatch TrainingArguments"):
        args.hf_deepspeed_config.trainer_config_finalize(args, model, 1)


@pytest.mark.parametrize(
    "params_billion,gpus,gpu_mem_gb,stage",
    [
        (7, 8, 80, 2),  # 14 + 98/8 = 26.25 GB <= 48
        (7, 4, 24, 3),  # 14 + 98/4 = 38.5 GB > 14.4
        (13, 8, 80, 3),  # 26 + 182/8 = 48.75 GB > 48
        (0.5, 1, 80, 2),  # 1 + 7 = 8 GB
    ],
)
def test_zero_stage_for(params_billion, gpus, gpu_mem_gb, stage):
    assert zero_stage_for(params_billion, gpus, gpu_mem_gb) == stage


def test_zero_stage_for_rejects_nonsense():
    with pytest.raises(ValueError, match="gpus >= 1"):
        zero_stage_for(7, 0, 80)
