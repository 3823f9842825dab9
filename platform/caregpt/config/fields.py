"""The building blocks every option spec is made of: the `Spec` base, field roles (`key`), and `CommaList`.

Every verb's options (run config, serve, eval, chat, data tools ...) are pydantic models built from these,
so one declaration gives the type, the check, the `--help` text and the metadata that resume naming,
Ray Tune and the tokenized cache read.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

# Key roles, declared once per field (``Annotated[type, key(...)]``) and read by resume naming
# (train/launch.py), Ray Tune (tune/space.py) and the tokenized cache (data/prepare.py):
#   shaping      changes what is trained (the default): part of the run name's hash
#   operational  where / how a run goes, not what it learns: a rerun with another value resumes
#   data         enters the tokenized data (the cache fingerprint); also shapes the model
ROLES = ("shaping", "operational", "data")


def key(role: str = "shaping", *, path: str | None = None, tune: str | None = None) -> Any:
    """Field metadata: role, path ("in": must exist, made absolute; "out": made absolute), and why Tune may not search it."""
    if role not in ROLES:
        raise ValueError(f"unknown key role {role!r}")
    extra = {"role": role}
    if path:
        extra["path"] = path
    if tune:
        extra["tune"] = tune
    return Field(json_schema_extra=extra)


def split_commas(value: Any) -> Any:
    """`a,b` on the command line and `[a, b]` in YAML mean the same list; anything else is left to the type check."""
    if value is None:
        return None
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


T = TypeVar("T")

# A list option that also takes `a,b` (flags, environment variables): `CommaList[str]`, `CommaList[float] | None`.
# The split lives in the type, so a field keeps it wherever it goes (a `pick`ed copy of a spec included).
CommaList = Annotated[list[T], BeforeValidator(split_commas)]


def _four_or_eight(value: int | None) -> int | None:
    if value not in (None, 4, 8):
        raise ValueError("must be 4 or 8 (bitsandbytes k-bit quantisation)")
    return value


# quantization_bit of every spec that loads a model (run config, serve): the check travels with the type
QuantizationBit = Annotated[int | None, AfterValidator(_four_or_eight)]


def adopt_adapter_alias(spec: BaseModel) -> None:
    """adapter_name_or_path (LLaMA-Factory's spelling) fills an unset checkpoint_dir (CareGPT's)."""
    if spec.adapter_name_or_path and not spec.checkpoint_dir:
        object.__setattr__(spec, "checkpoint_dir", spec.adapter_name_or_path)


class Spec(BaseModel):
    """Base of every option spec: the docstring under a field is its `--help` text; unknown keys are refused."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        extra="forbid",
        validate_assignment=True,
        protected_namespaces=(),
        populate_by_name=True,
    )
