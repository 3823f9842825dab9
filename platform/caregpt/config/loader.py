"""YAML + command-line loading into a validated RunConfig.

Order of precedence: defaults < YAML file < command-line flags. Every problem is reported on the
driver, before Ray starts, naming the key, the bad value, where it came from and what would be valid.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from caregpt.config.specs import GROUPS, RunConfig, key_owner

RESOLVED_CONFIG_NAME = "caregpt_config.yaml"


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message says how."""


def nearest_key(key: str, choices: list[str] | tuple[str, ...]) -> str | None:
    matches = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _unknown_key_message(key: str, source: str) -> str:
    hint = nearest_key(key, list(key_owner()))
    msg = f"unknown config key {key!r} ({source})"
    return msg + (f"; did you mean {hint!r}?" if hint else "; run `caregpt train --help` for the valid keys")


def parse_flags(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Split argv into positional arguments and `--key value` / `--key=value` / `key=value` overrides.

    A flag followed by another flag (or nothing) is a boolean switch, as in `--plot_loss --fp16`.
    Values stay strings here; pydantic coerces them against the field type.
    """
    positional: list[str] = []
    flags: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--"):
            body = token[2:].replace("-", "_")
            if "=" in body:
                key, value = body.split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                key, value = body, argv[i + 1]
                i += 1
            else:
                key, value = body, "true"
            flags[key] = value
        elif "=" in token and not token.startswith("/") and token.split("=", 1)[0].isidentifier():
            key, value = token.split("=", 1)
            flags[key] = value
        else:
            positional.append(token)
        i += 1
    return positional, flags


def _coerce_yaml_scalar(value: Any) -> Any:
    # YAML 1.1 reads `5e-5` as a string; flags are strings too. pydantic handles both, but for
    # dict-valued keys (resources_per_worker) a flag carries JSON text, so decode that here.
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level, got {type(data).__name__}")
    return data


def build_config(values: dict[str, tuple[Any, str]]) -> RunConfig:
    """values: flat key -> (value, source description). Validates into a RunConfig."""
    owners = key_owner()
    grouped: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    sources: dict[str, str] = {}
    for key, (value, source) in values.items():
        if key not in owners:
            raise ConfigError(_unknown_key_message(key, source))
        grouped[owners[key]][key] = _coerce_yaml_scalar(value)
        sources[key] = source
    parts = {}
    for group, spec in GROUPS.items():
        try:
            parts[group] = spec(**grouped[group])
        except ValidationError as exc:
            raise ConfigError(_validation_message(exc, grouped[group], sources)) from None
    return RunConfig(**parts)


def _validation_message(exc: ValidationError, given: dict[str, Any], sources: dict[str, str]) -> str:
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err.get("type") == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {err['ctx']['expected']}"
        if not err["loc"]:
            # model-level validators (e.g. fp16 together with bf16) concern several keys at once
            lines.append(f"invalid settings: {msg}")
            continue
        key = str(err["loc"][0])
        shown = f"{key}={given[key]!r}" if key in given else key
        lines.append(f"invalid {shown} ({sources.get(key, 'default value')}): {msg}")
    return "; ".join(lines)


def load_config(config_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults < YAML file < overrides (already parsed flags)."""
    values: dict[str, tuple[Any, str]] = {}
    if config_path is not None:
        for key, value in read_yaml(config_path).items():
            values[str(key)] = (value, f"from {config_path}")
    for key, value in (overrides or {}).items():
        values[key] = (value, "from the command line")
    return build_config(values)


def load_from_argv(argv: list[str]) -> RunConfig:
    """`[CONFIG.yaml] [--key value ...]` as every caregpt verb accepts it."""
    positional, flags = parse_flags(argv)
    yaml_files = [p for p in positional if p.endswith((".yaml", ".yml"))]
    extra = [p for p in positional if p not in yaml_files]
    if extra:
        raise ConfigError(f"unexpected argument(s) {extra}: pass options as --key value, and at most one CONFIG.yaml")
    if len(yaml_files) > 1:
        raise ConfigError(f"one config file at a time, got {yaml_files}")
    return load_config(yaml_files[0] if yaml_files else None, flags)


def save_resolved(config: RunConfig, directory: str | Path) -> Path:
    """Write the fully resolved flat config beside the outputs, so every later step knows how they were made."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESOLVED_CONFIG_NAME
    path.write_text(yaml.safe_dump(config.flat(), allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def config_to_json(config: RunConfig) -> str:
    """The form passed to Ray workers (plain JSON: no pickled classes cross the wire)."""
    return json.dumps(config.flat(), ensure_ascii=False)


def config_from_json(text: str) -> RunConfig:
    return build_config({k: (v, "from the driver") for k, v in json.loads(text).items()})
