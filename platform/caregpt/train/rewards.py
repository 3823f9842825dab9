"""What PPO maximises: a named rule reward, or a trained reward model.

``get_reward(config)`` (in a worker) returns ``score(prompts, responses) -> tensor[batch]``.
``validate_reward(config)`` (on the driver, before any worker starts) checks the choice with
file reads only, so a typo fails in a second rather than after the cluster spun up.

Rule rewards take the response text (and the prompt, for rules that need it) and return a float.
They are cheap and exactly checkable, which is what tests and smoke runs need; a reward model
(``--stage rm``) is what a real alignment run uses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from caregpt.config.loader import ConfigError, nearest_key

RewardFn = Callable[[list[str], list[str]], Any]  # -> torch.Tensor of shape [batch], float32

# Phrases that advise seeing a doctor: what a medical assistant should say about anything serious.
SAFETY_PHRASES = ("就医", "就诊", "医生", "医院", "急诊", "门诊", "专科", "doctor", "hospital", "physician", "emergency", "clinic")
# Below this many characters a reminder is not an answer: "就医。" alone must not earn full credit.
SAFETY_MIN_CHARS = 32
SAFETY_SHORT_PENALTY = 0.2

# Characters of common medical words (doctor, hospital, disease, medicine, treatment, symptom,
# examination, blood pressure, pain, diagnosis, advice, patient). Their share of a response is a
# dense reward: every token can move it a little, so even the random tiny test model learns it
# within a few dozen PPO steps (tests/ray/test_ppo.py); exact to check by hand, too.
MEDICAL_CHARS = frozenset("医生院病药治疗症状检查血压疼痛诊建议患者")


def safety_reminder(prompt: str, response: str) -> float:
    """1.0 when the answer advises seeing a doctor / going to hospital, else 0; short answers lose up to 0.2.

    The length term is what keeps the reward from being gamed: an empty answer scores -0.2, a bare
    "就医" 1.0 - 0.2 * 30/32, and any answer of SAFETY_MIN_CHARS characters or more that contains a
    reminder scores exactly 1.0 (longer answers earn nothing extra, so rambling is not rewarded either).
    """
    text = response.strip()
    hit = any(phrase in text.lower() for phrase in SAFETY_PHRASES)
    shortfall = max(0.0, 1.0 - len(text) / SAFETY_MIN_CHARS)
    return float(hit) - SAFETY_SHORT_PENALTY * shortfall


def keyword_density(prompt: str, response: str) -> float:
    """Share of the response's non-space characters that are in MEDICAL_CHARS (0 for an empty answer)."""
    chars = [c for c in response if not c.isspace()]
    return sum(c in MEDICAL_CHARS for c in chars) / len(chars) if chars else 0.0


REWARD_FUNCTIONS: dict[str, Callable[[str, str], float]] = {
    "safety_reminder": safety_reminder,
    "keyword_density": keyword_density,
}


def _rule_reward(rule: Callable[[str, str], float]) -> RewardFn:
    import torch

    def score(prompts: list[str], responses: list[str]):
        return torch.tensor([rule(p, r) for p, r in zip(prompts, responses)], dtype=torch.float32)

    return score


# ---- reward models ---------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _not_a_reward_model(path: str, why: str) -> ConfigError:
    return ConfigError(f"reward_model={path!r} is not a reward model ({why}); train one with --stage rm")


def _is_adapter(directory: Path) -> bool:
    # the rm stage with LoRA saves adapters + the score head (task_type SEQ_CLS) and no config.json
    return (directory / "adapter_config.json").is_file() and not (directory / "config.json").is_file()


def _check_adapter(path: str, directory: Path) -> None:
    settings = _read_json(directory / "adapter_config.json")
    if settings.get("task_type") != "SEQ_CLS":
        raise _not_a_reward_model(path, f"its adapter has task_type {settings.get('task_type')!r}, not SEQ_CLS")
    base = settings.get("base_model_name_or_path")
    if not base or (base.startswith(("/", ".", "~")) and not Path(base).expanduser().is_dir()):
        raise ConfigError(f"reward_model={path!r} is an adapter whose base model {base!r} is not available")


def check_reward_model_dir(path: str) -> None:
    """A full *ForSequenceClassification model dir, or a LoRA adapter trained for sequence classification."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"reward_model={path!r} does not exist; pass the output_dir of a `--stage rm` run")
    if _is_adapter(directory):
        return _check_adapter(path, directory)
    if not (directory / "config.json").is_file():
        raise _not_a_reward_model(path, "no config.json")
    architectures = _read_json(directory / "config.json").get("architectures") or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise _not_a_reward_model(path, f"architectures {architectures}, expected a *ForSequenceClassification")


def validate_reward(config) -> None:
    """Driver-side check of reward_model / reward_function for stage ppo (other stages: nothing to check)."""
    ft = config.finetune
    if ft.stage != "ppo":
        return
    names = ", ".join(REWARD_FUNCTIONS)
    if bool(ft.reward_model) == bool(ft.reward_function):
        which = "both are set" if ft.reward_model else "neither is set"
        raise ConfigError(
            f"stage ppo needs exactly one reward: reward_model (a `--stage rm` output dir) or reward_function "
            f"(one of: {names}); {which}"
        )
    if ft.reward_function:
        if ft.reward_function not in REWARD_FUNCTIONS:
            hint = nearest_key(ft.reward_function, list(REWARD_FUNCTIONS))
            raise ConfigError(
                f"unknown reward_function {ft.reward_function!r}" + (f" (did you mean {hint!r}?)" if hint else "") + f"; valid: {names}"
            )
        return
    check_reward_model_dir(ft.reward_model)


def _reward_spec(config, device):
    """The inference loader's spec for reward_model: a full classifier dir, or a SEQ_CLS adapter on its base."""
    from caregpt.models.inference import InferenceSpec

    path = config.finetune.reward_model
    directory = Path(path).expanduser()
    adapter = _is_adapter(directory)
    base = _read_json(directory / "adapter_config.json")["base_model_name_or_path"] if adapter else str(directory)
    # the rm stage saves its tokenizer beside the weights; an adapter dir may only have the base's
    tokenizer = str(directory) if (directory / "tokenizer_config.json").is_file() else base
    return InferenceSpec(
        model_name_or_path=base,
        adapters=(str(directory),) if adapter else (),  # merged: scoring is inference only, a plain model is faster
        tokenizer_name_or_path=tokenizer,
        trust_remote_code=config.model.trust_remote_code,
        device=str(device),
        bf16=config.train.bf16,
        reward_head=True,
    )


def _model_reward(config, device) -> RewardFn:
    import torch

    from caregpt.models.inference import load_inference_model, load_tokenizer

    spec = _reward_spec(config, device)
    model = load_inference_model(spec).requires_grad_(False)
    tokenizer = load_tokenizer(spec.tokenizer_name_or_path, trust_remote_code=spec.trust_remote_code)  # pad falls back to eos
    model.config.pad_token_id = tokenizer.pad_token_id  # the classifier reads the last non-pad token
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"  # too long: drop the prompt's start
    max_length = config.data.cutoff_len + config.train.max_new_tokens

    @torch.no_grad()
    def score(prompts: list[str], responses: list[str]):
        # prompts arrive templated (special tokens included), so the tokenizer must not add more
        texts = [p + r for p, r in zip(prompts, responses)]
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length, add_special_tokens=False)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        return logits[:, 0].float().cpu()

    return score


def get_reward(config, device: Any = "cpu") -> RewardFn:
    """The scorer for config.finetune.reward_function or reward_model (validated first)."""
    validate_reward(config)
    if config.finetune.reward_function:
        return _rule_reward(REWARD_FUNCTIONS[config.finetune.reward_function])
    return _model_reward(config, device)
