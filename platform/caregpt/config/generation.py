"""How answers are decoded: one spec for predict, eval, chat, serve and PPO's experience (the sampling keys)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from caregpt.config.fields import Spec, key

GEN = key("operational", tune="is how answers are generated, not what is trained")


class GenerationArgs(Spec):
    """How answers are decoded: one spec for predict, eval, chat and serve (`temperature: 0.7` in any of their YAMLs).

    Unset do_sample means: sample when temperature (> 0), top_p or top_k is given, else decode greedily.
    """

    max_new_tokens: Annotated[int, key(tune="is how answers are generated (PPO: experience length): set it once in the base config")] = Field(default=512, ge=1)
    """Longest generated answer in tokens."""

    do_sample: Annotated[bool | None, GEN] = None
    """Sample (true) or decode greedily (false, deterministic). Default: sample when a temperature > 0, top_p or top_k is given."""

    temperature: Annotated[float | None, GEN] = Field(default=None, ge=0.0)
    """Sampling temperature (default 1.0 when sampling; 0 means greedy decoding)."""

    top_p: Annotated[float | None, GEN] = Field(default=None, gt=0.0, le=1.0)
    """Nucleus sampling: keep the most likely tokens up to this probability mass (default 1.0)."""

    top_k: Annotated[int | None, GEN] = Field(default=None, ge=0)
    """Sample among the k most likely tokens (default 50; 0: no limit)."""

    repetition_penalty: Annotated[float, GEN] = Field(default=1.0, gt=0.0)
    """Penalise repeated tokens; > 1 discourages repetition, 1 is off."""

    @model_validator(mode="after")
    def _sampling(self) -> GenerationArgs:
        if self.do_sample and self.temperature == 0:
            raise ValueError("temperature=0 must be > 0 with do_sample (or drop do_sample for greedy decoding)")
        knobs = [k for k in ("temperature", "top_p", "top_k") if getattr(self, k) not in (None, 0)]
        if self.do_sample is False and knobs:
            raise ValueError(f"do_sample false decodes greedily, so {', '.join(knobs)} would be ignored: drop them or do_sample false")
        return self

    @property
    def sampling(self) -> bool:
        if self.do_sample is not None:
            return self.do_sample
        if self.temperature is not None:
            return self.temperature > 0
        return self.top_p is not None or bool(self.top_k)

    def resolved(self) -> dict[str, Any]:
        """Concrete decoding settings (what the generation code takes)."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.sampling,
            "temperature": self.temperature if self.temperature else 1.0,
            "top_p": self.top_p if self.top_p is not None else 1.0,
            "top_k": self.top_k if self.top_k is not None else 50,
            "repetition_penalty": self.repetition_penalty,
        }
