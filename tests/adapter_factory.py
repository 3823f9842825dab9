"""Build small LoRA adapters for tests without training: random non-zero B weights make them matter.

A freshly initialised LoRA has B = 0 (it changes nothing); tests that compare a merged model with
base + adapter, or check predictions, need an adapter that really moves the logits.
"""

from __future__ import annotations

from pathlib import Path

import yaml

TARGETS = ("q_proj", "v_proj", "down_proj")


def make_lora_adapter(base: str | Path, out: str | Path, *, seed: int = 1, template: str = "chatml", quantization_bit: int | None = None, scale: float = 0.5) -> Path:
    """Save a LoRA adapter for BASE into OUT with caregpt_config.yaml beside it, as training writes it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    kwargs = {}
    if quantization_bit:
        from transformers import BitsAndBytesConfig

        kwargs = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32), "device_map": {"": "cpu"}}
    model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGETS), lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale)
    out = Path(out)
    peft_model.save_pretrained(str(out))
    training = {"model_name_or_path": str(base), "template": template, "finetuning_type": "lora", "quantization_bit": quantization_bit}
    (out / "caregpt_config.yaml").write_text(yaml.safe_dump(training))
    return out
