"""The one loader of every verb: `[CONFIG.yaml] [ARG ...] [--key value ...]` into validated spec models.

Order of precedence: defaults < YAML file < command-line flags. Flags keep CareGPT's spellings (bare
switches `--plot_loss --fp16`, lists `--lora_target q_proj,v_proj`, `--resume_lora_training False`,
`--key=value`, dashes or underscores). Every problem is reported on the driver, before Ray starts, as one
ConfigError naming the key, the bad value, where it came from and what would be valid (the `caregpt`
CLI prints it as one line and exits 2). Local paths are made absolute against the working directory here.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from caregpt.config.specs import GROUPS, RunConfig, key_owner

RESOLVED_CONFIG_NAME = "caregpt_config.yaml"


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message says how."""


def nearest_key(key: str, choices: list[str] | tuple[str, ...]) -> str | None:
    matches = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _unknown_key_message(key: str, source: str, known: list[str] | None = None, verb: str = "train") -> str:
    hint = nearest_key(key, known if known is not None else list(key_owner()))
    msg = f"unknown config key {key!r} ({source})"
    return msg + (f"; did you mean {hint!r}?" if hint else f"; run `caregpt {verb} --help` for the valid keys")


def _is_flag(token: str) -> bool:
    # `-k` (one letter) is the short form of `--k`; `-1` stays a value
    return token.startswith("--") or (len(token) == 2 and token[0] == "-" and token[1].isalpha())


BOOL_WORDS = {"true", "false", "1", "0", "yes", "no", "on", "off", "t", "f", "y", "n"}


def parse_flags(argv: list[str], multi: frozenset[str] | set[str] = frozenset(),
                switches: frozenset[str] | set[str] = frozenset()) -> tuple[list[str], dict[str, Any]]:
    """Split argv into positional arguments and `--key value` / `--key=value` / `key=value` overrides.

    A flag followed by another flag (or nothing) is a boolean switch, as in `--plot_loss --fp16`.
    Keys in `multi` take every value up to the next flag (`--data a.jsonl b.jsonl`), as a list. Keys in
    `switches` (boolean fields) take the next token only when it is a boolean word, so `--json "query"`
    leaves the query positional.
    Values stay strings here; pydantic coerces them against the field type.
    """
    positional: list[str] = []
    flags: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if _is_flag(token):
            name, eq, value = token.lstrip("-").partition("=")
            key = name.replace("-", "_")  # `--api-base` is `--api_base`; values keep their dashes
            if key in multi and not eq:
                values = []
                while i + 1 < len(argv) and not _is_flag(argv[i + 1]):
                    values.append(argv[i + 1])
                    i += 1
                flags[key] = values or "true"
                i += 1
                continue
            if not eq:
                if i + 1 < len(argv) and not _is_flag(argv[i + 1]) and (key not in switches or argv[i + 1].lower() in BOOL_WORDS):
                    value = argv[i + 1]
                    i += 1
                else:
                    value = "true"
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
            try:  # `[a, b]` as YAML writes it
                return yaml.safe_load(value)
            except yaml.YAMLError:
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


def _literal_choices(spec: type[BaseModel], key: str) -> str | None:
    from caregpt.config.help import type_name

    field = spec.model_fields.get(key)
    if field is None:
        return None
    shown = type_name(field.annotation)
    return shown if shown.startswith("{") else None


def option_names(spec: type[BaseModel]) -> list[str]:
    """A spec's option names: field names plus their declared aliases (AliasChoices)."""
    from pydantic import AliasChoices

    names: list[str] = []
    for name, field in spec.model_fields.items():
        names.append(name)
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names += [c for c in alias.choices if isinstance(c, str) and c != name]
    return names


def build_sections(values: dict[str, tuple[Any, str]], sections: dict[str, type[BaseModel]], verb: str = "train") -> dict[str, BaseModel]:
    """The one validation path: flat key -> (value, source) into one model per section.

    Every key belongs to exactly one section; an unknown key, a bad value or a missing required one raises
    ConfigError naming the key, where it came from and what is valid (the caregpt CLI: one line, exit 2).
    """
    owners: dict[str, str] = {}
    for name, spec in sections.items():
        for key in option_names(spec):
            if key in owners:
                raise RuntimeError(f"option {key!r} declared in both {owners[key]} and {name}")
            owners[key] = name
    grouped: dict[str, dict[str, Any]] = {name: {} for name in sections}
    sources: dict[str, str] = {}
    for key, (value, source) in values.items():
        if key not in owners:
            raise ConfigError(_unknown_key_message(key, source, list(owners), verb))
        grouped[owners[key]][key] = _coerce_yaml_scalar(value)
        sources[key] = source
    parts: dict[str, BaseModel] = {}
    for name, spec in sections.items():
        try:
            parts[name] = spec(**grouped[name])
        except ValidationError as exc:
            raise ConfigError(_validation_message(exc, spec, grouped[name], sources, verb)) from None
    return parts


def build_config(values: dict[str, tuple[Any, str]], verb: str = "train") -> RunConfig:
    """values: flat key -> (value, source description). Validates into a RunConfig."""
    return RunConfig(**build_sections(values, GROUPS, verb))


def _validation_message(exc: ValidationError, spec: type[BaseModel], given: dict[str, Any], sources: dict[str, str], verb: str) -> str:
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:
            # model-level validators (e.g. fp16 together with bf16) concern several keys at once
            lines.append(f"invalid settings: {msg}")
            continue
        key = str(err["loc"][0])
        if err.get("type") == "missing":
            lines.append(f"{key} is required: pass --{key} ... (see `caregpt {verb} --help`)")
            continue
        choices = _literal_choices(spec, key)
        if err.get("type") == "literal_error" or (choices and "literal" in err.get("type", "")):
            msg = f"must be one of {err.get('ctx', {}).get('expected') or choices}"
        elif choices:
            msg += f" (valid: {choices})"
        shown = f"{key}={given[key]!r}" if key in given else key
        lines.append(f"invalid {shown} ({sources.get(key, 'default value')}): {msg}")
    return "; ".join(lines)


def split_argv(argv: list[str], *, positional: int = 0, yaml: bool = True,
               multi: frozenset[str] | set[str] = frozenset(),
               switches: frozenset[str] | set[str] = frozenset()) -> tuple[str | None, list[str], dict[str, Any]]:
    """`[CONFIG.yaml] [ARG ...] [--key value ...]` -> (yaml file, other positional arguments, flags).

    At most one YAML file and at most `positional` other arguments; anything else is an error naming it.
    """
    args, flags = parse_flags(argv, multi, switches)
    yaml_files = [p for p in args if yaml and p.endswith((".yaml", ".yml"))]
    rest = [p for p in args if p not in yaml_files]
    if len(yaml_files) > 1:
        raise ConfigError(f"one config file at a time, got {yaml_files}")
    if len(rest) > positional:
        raise ConfigError(f"unexpected argument(s) {rest[positional:]}: pass options as --key value, and at most one CONFIG.yaml")
    return (yaml_files[0] if yaml_files else None), rest, flags


def gather(config_path: str | Path | None, flags: dict[str, Any] | None, defaults: dict[str, Any] | None = None,
           default_source: str = "this command's default") -> dict[str, tuple[Any, str]]:
    """Defaults < YAML file < flags, each value with where it came from."""
    values: dict[str, tuple[Any, str]] = {k: (v, default_source) for k, v in (defaults or {}).items()}
    if config_path is not None:
        for key, value in read_yaml(config_path).items():
            values[str(key)] = (value, f"from {config_path}")
    for key, value in (flags or {}).items():
        values[key] = (value, "from the command line")
    return values


def load_config(config_path: str | Path | None = None, overrides: dict[str, Any] | None = None, *, resolve: bool = True) -> RunConfig:
    """Defaults < YAML file < overrides (already parsed flags); local paths made absolute against the cwd."""
    config = build_config(gather(config_path, overrides))
    return resolve_paths(config) if resolve else config


def load_from_argv(argv: list[str]) -> RunConfig:
    """`[CONFIG.yaml] [--key value ...]` as every run-config verb accepts it."""
    config_path, _, flags = split_argv(argv)
    return load_config(config_path, flags)


def _resolve_one(value: str, kind: str, base: Path) -> str:
    if "://" in value or not value:
        return value
    path = Path(value).expanduser()
    candidate = path if path.is_absolute() else base / path
    # inputs: only what exists here (a hub id or a DeepSpeed stage number stays as written); outputs: always
    if kind == "out" or candidate.exists():
        return str(candidate.resolve())
    return value


def _path_kind(spec: type[BaseModel], name: str) -> str | None:
    extra = spec.model_fields[name].json_schema_extra
    return extra.get("path") if isinstance(extra, dict) else None


def resolve_spec_paths(model: BaseModel, base: str | Path | None = None) -> BaseModel:
    """A copy of any spec model with its path fields (``key(path=...)``) made absolute against `base` (the cwd)."""
    base = Path(base or Path.cwd())
    changed: dict[str, Any] = {}
    for name in type(model).model_fields:
        kind, value = _path_kind(type(model), name), getattr(model, name)
        if kind and value:
            new = [_resolve_one(str(v), kind, base) for v in value] if isinstance(value, list) else _resolve_one(str(value), kind, base)
            if new != value:
                changed[name] = new
    return model.model_copy(update=changed) if changed else model


def resolve_paths(config: RunConfig, base: str | Path | None = None) -> RunConfig:
    """Every local path key made absolute against `base` (the caller's working directory), on the driver.

    Ray actors and Train workers run in other working directories; a `ray job submit --working-dir`
    driver runs inside that working directory, so its relative paths resolve there.
    """
    from caregpt.data.registry import FILE_SUFFIXES
    from caregpt.config.specs import field_meta

    base = Path(base or Path.cwd())
    flat = config.flat()
    changed: dict[str, Any] = {}
    for key, value in flat.items():
        kind = field_meta(key).get("path")
        if kind and value:
            new = [_resolve_one(str(v), kind, base) for v in value] if isinstance(value, list) else _resolve_one(str(value), kind, base)
            if new != value:
                changed[key] = new
    datasets = flat.get("dataset") or []
    files = [str((base / d).resolve()) if Path(d).suffix in FILE_SUFFIXES and (base / d).is_file() else d for d in datasets]
    if files != datasets:
        changed["dataset"] = files
    if not changed:
        return config
    return build_config({k: (v, "resolved") for k, v in {**flat, **changed}.items()})


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


def _keys_where(specs, wanted) -> set[str]:
    """Option names (aliases too) of the fields for which wanted(field) holds."""
    keys: set[str] = set()
    for spec in specs:
        for name, field in spec.model_fields.items():
            if wanted(field):
                keys |= {name, *(c for c in getattr(field.validation_alias, "choices", []) if isinstance(c, str))}
    return keys


def multi_value_keys(specs) -> set[str]:
    """Fields declared `Field(json_schema_extra={"nargs": "+"})`: `--data a b` is a list."""
    return _keys_where(specs, lambda f: isinstance(f.json_schema_extra, dict) and bool(f.json_schema_extra.get("nargs")))


def switch_keys(specs) -> set[str]:
    """Boolean fields: a bare `--json` before a positional argument is a switch, not `--json=ARG`."""
    return _keys_where(specs, lambda f: f.annotation is bool)


def load_verb(argv: list[str], sections: dict[str, type[BaseModel]], *, verb: str, positional: int = 0,
              defaults: dict[str, Any] | None = None, config_file: bool = True) -> tuple[dict[str, BaseModel], list[str], set[str]]:
    """A verb's `[CONFIG.yaml] [ARG ...] [--key value ...]` into its spec sections.

    Returns (section models, positional arguments, the keys the user set). `defaults` are the verb's own
    defaults for keys of shared specs (chat samples at temperature 0.7 where predict decodes greedily).
    config_file=False: a YAML argument is a positional argument (`caregpt run PIPELINE.yaml`), not options.
    """
    multi, switches = multi_value_keys(sections.values()), switch_keys(sections.values())
    config_path, rest, flags = split_argv(argv, positional=positional, yaml=config_file, multi=multi, switches=switches)
    values = gather(config_path, flags, defaults, default_source=f"the default of caregpt {verb}")
    given = {k for k, (_, source) in values.items() if not source.startswith("the default")}
    return build_sections(values, sections, verb), rest, given
