"""`--help` text generated from the specs, so documentation and validation never drift apart."""

from __future__ import annotations

import textwrap
from typing import Any, Literal, get_args, get_origin

from caregpt.config.specs import GROUPS

GROUP_TITLES = {
    "model": "Model",
    "data": "Data",
    "finetune": "Fine-tuning",
    "train": "Training",
    "ray": "Ray cluster",
}


def _type_name(annotation: Any) -> str:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return "{" + "|".join(str(a) for a in args) + "}"
    if args and get_origin(annotation) not in (list, dict):
        # Optional[X] / X | None: show X, the None is the "unset" default
        return " | ".join(_type_name(a) for a in args)
    text = str(annotation).replace("typing.", "")
    for noise in ("<class '", "'>"):
        text = text.replace(noise, "")
    return text


def options_help(groups: tuple[str, ...] = tuple(GROUPS), width: int = 100) -> str:
    lines: list[str] = []
    for group in groups:
        spec = GROUPS[group]
        lines.append(f"{GROUP_TITLES[group]} options:")
        for name, field in spec.model_fields.items():
            default = field.default
            shown_default = "" if default is None else f" (default: {default})"
            lines.append(f"  --{name} {_type_name(field.annotation)}{shown_default}")
            doc = field.description or ""
            lines.extend(textwrap.wrap(doc, width=width, initial_indent=" " * 6, subsequent_indent=" " * 6))
        lines.append("")
    return "\n".join(lines)
