"""Model validation, loading and fine-tuning modes on the tiny scratch model (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from caregpt.config.loader import ConfigError, load_config
from caregpt.models.adapters import apply_finetuning, save_trained, trainable_parameters
from caregpt.models.loader import load_model, resolve_dtype, validate_model

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny(tiny_model) -> Path:
    return Path(tiny_model)  # the session's tiny model (conftest); nothing here writes into it


def cfg(tiny: Path, **overrides):
    return load_config(None, {"model_name_or_path": str(tiny), "lora_dropout": 0.0, **overrides})


def batch(n: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(5, 4000, (n, length), generator=torch.Generator().manual_seed(0))


def train_step(model, lr: float = 1e-2) -> float:
    x = batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def eval_loss(model) -> float:
    model.eval()  # no dropout: the two losses compared must be deterministic
    with torch.no_grad():
        loss = model(input_ids=batch(), labels=batch()).loss.item()
    model.train()
    return loss


def trainable_names(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def lora_modules(model) -> set[str]:
    return {name.split(".lora_A")[0].split("base_model.model.")[-1] for name in trainable_names(model) if ".lora_A" in name}


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory) -> Path:
    """A LoRA (q_proj, v_proj) trained a few steps so that B is far from zero, then saved."""
    config = cfg(tiny, lora_target="q_proj,v_proj")
    model = apply_finetuning(load_model(config), config)
    for _ in range(3):
        train_step(model)
    save_trained(model, out := tmp_path_factory.mktemp("adapter"))
    return out



def test_validate_ok_returns_facts_without_loading_weights(tiny, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", None)  # validate_model must not load weights
    facts = validate_model(cfg(tiny, lora_target="all"))
    assert facts == {"model_type": "llama", "num_layers": 2, "max_position_embeddings": 1024, "linear_modules": LINEAR}
    validate_model(cfg(tiny, lora_target="model.layers.0.self_attn.q_proj,lm_head"))  # PEFT suffix rule


@pytest.mark.parametrize("name", [None, "   "])
def test_validate_model_unset(name):
    with pytest.raises(ConfigError, match=r"model_name_or_path is not set.*config\.json"):
        validate_model(load_config(None, {"model_name_or_path": name}))


def test_validate_local_path_missing_or_not_a_model(tmp_path):
    missing = str(tmp_path / "no" / "model")
    with pytest.raises(ConfigError, match="does not exist") as err:
        validate_model(load_config(None, {"model_name_or_path": missing}))
    assert missing in str(err.value) and "config.json" in str(err.value)
    with pytest.raises(ConfigError, match="has no config.json"):
        validate_model(load_config(None, {"model_name_or_path": str(tmp_path)}))


def test_validate_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(ConfigError, match=r"caregpt-test/no-such-model.*HF_HUB_OFFLINE=1.*config\.json"):
        validate_model(load_config(None, {"model_name_or_path": "caregpt-test/no-such-model"}))


def test_validate_bad_lora_target_names_it_and_lists_valid(tiny):
    with pytest.raises(ConfigError) as err:
        validate_model(cfg(tiny, lora_target="q_prj,v_proj"))
    msg = str(err.value)
    assert "'q_prj'" in msg and "did you mean 'q_proj'" in msg
    assert "'v_proj'" not in msg  # v_proj is valid: only listed, not blamed
    assert ", ".join(LINEAR) in msg and "`all`" in msg
    with pytest.raises(ConfigError, match="self_attn"):
        validate_model(cfg(tiny, lora_target="self_attn"))  # a module, but not one LoRA can adapt


def test_validate_cutoff_len_names_both_lengths(tiny):
    with pytest.raises(ConfigError, match=r"cutoff_len=2048.*max_position_embeddings=1024"):
        validate_model(cfg(tiny, cutoff_len=2048))
    validate_model(cfg(tiny, cutoff_len=1024))


def test_validate_quantization_needs_lora(tiny):
    with pytest.raises(ConfigError, match=r"quantization_bit=4 needs finetuning_type: lora.*'full'"):
        validate_model(cfg(tiny, quantization_bit=4, finetuning_type="full"))


def test_validate_freeze_layer_count(tiny):
    with pytest.raises(ConfigError, match=r"num_layer_trainable=3 but the model has 2 decoder layers"):
        validate_model(cfg(tiny, finetuning_type="freeze", num_layer_trainable=3))
    validate_model(cfg(tiny, finetuning_type="freeze", num_layer_trainable=2))


def test_validate_checkpoint_dir_must_be_adapters(tiny, tmp_path, adapter):
    with pytest.raises(ConfigError, match=r"not an adapter directory: no adapter_config\.json.*model_name_or_path"):
        validate_model(cfg(tiny, checkpoint_dir=str(tiny)))
    with pytest.raises(ConfigError, match="does not exist"):
        validate_model(cfg(tiny, checkpoint_dir=f"{adapter},{tmp_path / 'gone'}"))
    validate_model(cfg(tiny, checkpoint_dir=str(adapter)))


def test_validate_quantized_merge_refused(tiny, adapter):
    with pytest.raises(ConfigError, match=r"cannot merge adapter.*4-bit.*[Mm]erge them first"):
        validate_model(cfg(tiny, quantization_bit=4, checkpoint_dir=str(adapter), resume_lora_training=False))
    validate_model(cfg(tiny, quantization_bit=4, checkpoint_dir=str(adapter)))  # resuming needs no merge



def test_load_model_for_training(tiny):
    model = load_model(cfg(tiny, gradient_checkpointing=True, bf16=True))
    assert model.config.use_cache is False and model.training
    assert model.is_activation_checkpointing
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # fp32 on CPU even with bf16 set
    assert load_model(cfg(tiny), for_training=False).training is False


def test_resolve_dtype_on_gpu(tiny, monkeypatch):
    gpu = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype(cfg(tiny, fp16=True), gpu) == torch.float16
    assert resolve_dtype(cfg(tiny), gpu) == torch.bfloat16  # lora default
    assert resolve_dtype(cfg(tiny, finetuning_type="full"), gpu) == torch.float32
    assert resolve_dtype(cfg(tiny, finetuning_type="full", bf16=True), gpu) == torch.bfloat16
    assert resolve_dtype(cfg(tiny), torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype(cfg(tiny), gpu) == torch.float32



def test_lora_q_v_only(tiny):
    config = cfg(tiny, lora_target="q_proj,v_proj")
    model = apply_finetuning(load_model(config), config)
    names = trainable_names(model)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    expected = {f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")}
    assert lora_modules(model) == expected
    trainable, total = trainable_parameters(model)
    assert trainable == 4 * 8 * (128 + 128) and total > 900_000  # 4 modules x r x (in + out)


def test_lora_all_targets_every_linear_but_lm_head(tiny):
    config = cfg(tiny, lora_target="all")
    base = load_model(config)
    linear = {n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    model = apply_finetuning(base, config)
    assert lora_modules(model) == linear and len(linear) == 14


def test_lora_step_reduces_loss(tiny):
    config = cfg(tiny, lora_target="all", learning_rate=1e-2)
    model = apply_finetuning(load_model(config), config)
    before = eval_loss(model)
    train_step(model)
    assert eval_loss(model) < before - 1e-3


def test_freeze_last_layer_only(tiny):
    config = cfg(tiny, finetuning_type="freeze", num_layer_trainable=1)
    model = apply_finetuning(load_model(config), config)
    layer1 = {f"model.layers.1.{n}" for n, _ in model.model.layers[1].named_parameters()}
    assert set(trainable_names(model)) == layer1 and layer1


def test_full_everything(tiny, tmp_path):
    config = cfg(tiny, finetuning_type="full")
    model = load_model(config)
    model.model.embed_tokens.requires_grad_(False)  # whatever was frozen before, full trains it all
    model = apply_finetuning(model, config)
    trainable, total = trainable_parameters(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())
    written = save_trained(model, tmp_path)
    assert "model.safetensors" in written and "config.json" in written
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".bin", ".pt", ".pth")]
    assert load_file(tmp_path / "model.safetensors")  # readable safetensors


def test_qlora_4bit_cpu_trains_only_lora(tiny, monkeypatch):
    import bitsandbytes as bnb
    import peft

    prepared, real = [], peft.prepare_model_for_kbit_training
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", lambda m, **kw: prepared.append(m) or real(m, **kw))
    config = cfg(tiny, quantization_bit=4, lora_target="q_proj,v_proj", gradient_checkpointing=True)
    model = apply_finetuning(load_model(config), config)
    assert len(prepared) == 1  # QLoRA recipe: norms in fp32, base frozen, before the adapters go on
    assert isinstance(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    assert lora_modules(model) == {f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(model)
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and all(".lora_" in n for n in changed)  # 4-bit weights, norms, embeddings untouched
    assert all(n in changed for n in before if ".lora_B." in n)  # B gets a gradient on the first step
    with torch.no_grad():  # eval on CPU (bitsandbytes' repacking path would crash on the 352-wide MLP)
        model.eval()
        assert torch.isfinite(model(input_ids=batch()).logits).all()


def test_8bit_on_cpu_loads_and_trains_lora(tiny):
    import bitsandbytes as bnb

    config = cfg(tiny, quantization_bit=8)
    model = apply_finetuning(load_model(config), config)
    assert isinstance(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear8bitLt)
    x = batch()
    model(input_ids=x, labels=x).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if ".lora_B." in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_save_trained_adapter_is_safetensors_only(adapter):
    files = {p.name for p in adapter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files and not [f for f in files if f.endswith(".bin")]


def test_resume_continues_saved_adapter(tiny, adapter):
    from peft import get_peft_model_state_dict

    config = cfg(tiny, checkpoint_dir=str(adapter), resume_lora_training=True, lora_target="all")
    model = apply_finetuning(load_model(config), config)
    saved = load_file(adapter / "adapter_model.safetensors")
    loaded = get_peft_model_state_dict(model)
    assert set(loaded) == set(saved)  # the saved q/v adapter, not a new `all` one
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)
    assert set(trainable_names(model)) == {n for n, _ in model.named_parameters() if ".lora_" in n}


def test_no_resume_merges_then_fresh_lora(tiny, adapter):
    config = cfg(tiny, checkpoint_dir=str(adapter), resume_lora_training=False)
    model = apply_finetuning(load_model(config), config)
    base = load_file(tiny / "model.safetensors")
    saved = load_file(adapter / "adapter_model.safetensors")
    scale = 16 / 8  # default lora_alpha = 2 x rank
    for i in range(2):
        for proj in ("q_proj", "v_proj"):
            key = f"model.layers.{i}.self_attn.{proj}"
            layer = model.base_model.model.get_submodule(key)
            a, b = saved[f"base_model.model.{key}.lora_A.weight"], saved[f"base_model.model.{key}.lora_B.weight"]
            expected = base[f"{key}.weight"] + scale * b @ a
            assert not torch.allclose(layer.base_layer.weight, base[f"{key}.weight"])
            torch.testing.assert_close(layer.base_layer.weight, expected, rtol=1e-5, atol=1e-6)
            assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # fresh: B starts at zero
            assert not torch.equal(layer.lora_A["default"].weight, a)


def test_quantized_merge_refused_at_apply(tiny, adapter):
    config = cfg(tiny, quantization_bit=4, checkpoint_dir=str(adapter), resume_lora_training=False)
    with pytest.raises(ConfigError, match="cannot merge adapter"):
        apply_finetuning(load_model(config), config)


def test_adapter_chain_merges_earlier_resumes_last(tiny, adapter):
    config = cfg(tiny, checkpoint_dir=f"{adapter},{adapter}", resume_lora_training=True)
    model = apply_finetuning(load_model(config), config)
    key = "model.layers.0.self_attn.q_proj"
    saved = load_file(adapter / "adapter_model.safetensors")
    a, b = saved[f"base_model.model.{key}.lora_A.weight"], saved[f"base_model.model.{key}.lora_B.weight"]
    layer = model.base_model.model.get_submodule(key)
    torch.testing.assert_close(layer.base_layer.weight, load_file(tiny / "model.safetensors")[f"{key}.weight"] + 2 * b @ a)
    assert torch.equal(layer.lora_B["default"].weight, b) and layer.lora_B["default"].weight.requires_grad


def test_save_trained_merged_adapter(tiny, adapter, tmp_path):
    config = cfg(tiny, checkpoint_dir=str(adapter))
    model = apply_finetuning(load_model(config), config)
    written = save_trained(model, tmp_path, merge=True)
    assert "model.safetensors" in written and not [f for f in written if f.startswith("adapter_") or f.endswith(".bin")]
    weights = load_file(tmp_path / "model.safetensors")
    assert not [k for k in weights if "lora_" in k]
    assert '"use_cache": true' in (tmp_path / "config.json").read_text()  # saved for inference
