"""`pick`: a verb's spec made of fields declared once in another spec (eval's model keys are the run config's)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, create_model, field_validator

from caregpt.config.fields import Spec


def pick(spec: type[BaseModel], names: tuple[str, ...], title: str, *, base: type[Spec] = Spec, **defaults: Any) -> type[Spec]:
    """A spec made of some fields of `spec`, declared once there (type, docstring, metadata, checks).

    `defaults` replace their defaults (None: "unset, use what the checkpoint recorded"); `base` adds the
    verb's own fields. Checks in the type (`CommaList`, `Field(ge=...)`) travel with the field; the spec's
    `field_validator`s are copied for the picked fields (model validators are not: they may read others).
    """
    missing = [name for name in names if name not in spec.model_fields]
    if missing:
        raise KeyError(f"{spec.__name__} has no field(s) {missing}")
    fields: dict[str, Any] = {}
    for name in names:
        info = spec.model_fields[name]._copy()
        annotation = info.annotation
        if name in defaults:
            info.default = defaults[name]
            annotation = annotation | None if defaults[name] is None else annotation
        fields[name] = (annotation, info)
    validators = {}
    for vname, decorator in spec.__pydantic_decorators__.field_validators.items():
        picked = tuple(f for f in decorator.info.fields if f in names)
        if picked:
            def check(value: Any, _original=getattr(spec, vname)) -> Any:  # the spec's own (cls, value) check;
                return value if value is None else _original(value)     # None: "unset" where pick made it optional

            validators[vname] = field_validator(*picked, mode=decorator.info.mode)(check)
    return create_model(title, __base__=base, __validators__=validators, **fields)
