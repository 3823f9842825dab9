"""`--help` text generated from the specs, so documentation and validation never drift apart.

One renderer for every verb: a usage line, a summary, then each spec section's options with their
type, default and the docstring under the field.
"""

from __future__ import annotations

import textwrap
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel

from caregpt.config.specs import GROUPS

GROUP_TITLES = {
    "model": "Model",
    "data": "Data",
    "finetune": "Fine-tuning",
    "train": "Training",
    "generation": "Generation (sampling)",
    "ray": "Ray cluster",
}


def type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:  # a type with its check attached (CommaList[str]): show the type
        return type_name(get_args(annotation)[0])
    args = [a for a in get_args(annotation) if a is not type(None)]
    if origin is Literal:
        return "{" + "|".join(str(a) for a in args) + "}"
    if origin is list and args and get_origin(args[0]) is Literal:
        return type_name(args[0]) + "[,...]"
    if origin is list:
        return f"{type_name(args[0]) if args else 'str'}[,...]"
    if args and origin is not dict:
        # Optional[X] / X | None: show X, the None is the "unset" default
        return " | ".join(type_name(a) for a in args)
    text = getattr(annotation, "__name__", None) if origin is None else None
    text = text or str(annotation).replace("typing.", "")
    for noise in ("<class '", "'>"):
        text = text.replace(noise, "")
    return text


def _shown_default(field) -> str:
    if field.is_required():
        return " (required)"
    default = field.default
    if default is None or default == {} or default == []:
        return ""
    if isinstance(default, list):
        default = ",".join(map(str, default))
    if isinstance(default, str) and len(default) > 40:
        return " (default: built in)"
    return f" (default: {default})"


def section_help(title: str, spec: type[BaseModel], width: int = 100, skip: tuple[str, ...] = ()) -> list[str]:
    lines = [f"{title} options:"]
    for name, field in spec.model_fields.items():
        if name in skip:
            continue
        aliases = [a for a in getattr(field.validation_alias, "choices", []) if isinstance(a, str) and a != name]
        also = f" (also --{', --'.join(aliases)})" if aliases else ""
        lines.append(f"  --{name} {type_name(field.annotation)}{_shown_default(field)}{also}")
        doc = " ".join((field.description or "").split())
        lines.extend(textwrap.wrap(doc, width=width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    lines.append("")
    return lines


def render_help(usage: str, summary: str, sections: list[tuple[str, type[BaseModel]]], epilog: str = "", width: int = 100) -> str:
    """The whole `--help` page of a verb."""
    parts = [f"usage: {usage}", ""]
    for paragraph in summary.split("\n\n"):
        parts += [textwrap.fill(paragraph, width) if "\n" not in paragraph else paragraph, ""]
    for title, spec in sections:
        parts += section_help(title, spec, width)
    if epilog:
        parts.append(epilog)
    return "\n".join(parts).rstrip() + "\n"


def options_help(groups: tuple[str, ...] = tuple(GROUPS), width: int = 100) -> str:
    lines: list[str] = []
    for group in groups:
        lines += section_help(GROUP_TITLES[group], GROUPS[group], width)
    return "\n".join(lines)


def run_sections(groups: tuple[str, ...] = tuple(GROUPS)) -> list[tuple[str, type[BaseModel]]]:
    return [(GROUP_TITLES[g], GROUPS[g]) for g in groups]
