"""The dataset registry: CareGPT's `dataset_info.json`, read as is.

An entry names one dataset and where it lives (`file_name`, `hf_hub_url` or `script_url`), with an
optional `file_sha1`, a `columns` mapping onto prompt / query / response / history (alpaca) or
messages / system (sharegpt), a `formatting` and a `ranking` flag for preference pairs.
A `--dataset` value that is not a registered name but an existing file is accepted directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from caregpt.config.loader import ConfigError, nearest_key

logger = logging.getLogger(__name__)

REGISTRY_FILE = "dataset_info.json"
FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
}
KNOWN_ENTRY_KEYS = {"file_name", "file_sha1", "hf_hub_url", "script_url", "columns", "formatting", "ranking", "tags", "split", "subset"}


@dataclass
class DatasetAttr:
    """One resolved registry entry."""

    name: str
    load_from: Literal["file", "hf_hub", "script"]
    path: str
    formatting: Literal["alpaca", "sharegpt"] = "alpaca"
    ranking: bool = False
    file_sha1: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    split: str = "train"

    def column(self, role: str) -> str | None:
        """Source column for a role; '' in the registry means the dataset has no such column."""
        value = self.columns.get(role)
        return value or None

    @property
    def is_plain_text(self) -> bool:
        return self.path.endswith(".txt")


def registry_path(dataset_dir: str | Path, dataset_info: str | Path | None = None) -> Path:
    return Path(dataset_info) if dataset_info else Path(dataset_dir) / REGISTRY_FILE


def load_registry(dataset_dir: str | Path, dataset_info: str | Path | None = None) -> dict[str, dict[str, Any]]:
    path = registry_path(dataset_dir, dataset_info)
    if not path.is_file():
        return {}
    try:
        registry = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(registry, dict):
        raise ConfigError(f"{path}: expected an object mapping dataset names to entries")
    return registry


def _entry_to_attr(name: str, entry: dict[str, Any], dataset_dir: Path, source: Path) -> DatasetAttr:
    if not isinstance(entry, dict):
        raise ConfigError(f"{source}: entry {name!r} must be an object, got {type(entry).__name__}")
    unknown = set(entry) - KNOWN_ENTRY_KEYS
    if unknown:
        key = sorted(unknown)[0]
        hint = nearest_key(key, sorted(KNOWN_ENTRY_KEYS))
        raise ConfigError(
            f"{source}: entry {name!r} has unknown field {key!r}"
            + (f"; did you mean {hint!r}?" if hint else f"; valid fields: {sorted(KNOWN_ENTRY_KEYS)}")
        )
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise ConfigError(f"{source}: entry {name!r}: formatting must be 'alpaca' or 'sharegpt', got {formatting!r}")
    defaults = SHAREGPT_COLUMNS if formatting == "sharegpt" else ALPACA_COLUMNS
    given = entry.get("columns")
    # CareGPT lists every alpaca column it uses, with "" for absent ones; a pretraining entry names
    # only "prompt". So given columns replace the alpaca defaults rather than merging with them.
    if given and formatting == "alpaca":
        columns = dict(given)
    else:
        columns = {**defaults, **(given or {})}
    tags = {**SHAREGPT_TAGS, **(entry.get("tags") or {})}
    common = dict(
        name=name,
        formatting=formatting,
        ranking=bool(entry.get("ranking", False)),
        columns=columns,
        tags=tags,
        split=entry.get("split", "train"),
    )
    if "file_name" in entry:
        file_path = (dataset_dir / entry["file_name"]).resolve()
        return DatasetAttr(load_from="file", path=str(file_path), file_sha1=entry.get("file_sha1"), **common)
    if "hf_hub_url" in entry:
        return DatasetAttr(load_from="hf_hub", path=entry["hf_hub_url"], **common)
    if "script_url" in entry:
        return DatasetAttr(load_from="script", path=str(dataset_dir / entry["script_url"]), **common)
    raise ConfigError(f"{source}: entry {name!r} needs one of file_name, hf_hub_url or script_url")


def _direct_file_attr(name: str) -> DatasetAttr:
    """`--dataset path/to/data.jsonl`: alpaca columns by default, sharegpt detected when reading."""
    return DatasetAttr(name=Path(name).stem, load_from="file", path=str(Path(name).resolve()), columns=dict(ALPACA_COLUMNS), tags=dict(SHAREGPT_TAGS))


def resolve_datasets(names: list[str] | None, dataset_dir: str | Path, dataset_info: str | Path | None = None) -> list[DatasetAttr]:
    """Look every requested name up; fail with the available names and the nearest one."""
    if not names:
        raise ConfigError("no dataset given: set `dataset` (a name from dataset_info.json or a data file path)")
    dataset_dir = Path(dataset_dir)
    source = registry_path(dataset_dir, dataset_info)
    registry = load_registry(dataset_dir, dataset_info)
    attrs = []
    for name in names:
        if name in registry:
            attrs.append(_entry_to_attr(name, registry[name], dataset_dir, source))
        elif Path(name).suffix in FILE_SUFFIXES and Path(name).is_file():
            attrs.append(_direct_file_attr(name))
        else:
            where = f"{source}" if source.is_file() else f"{source} (which does not exist)"
            hint = nearest_key(name, list(registry))
            available = ", ".join(sorted(registry)[:20]) or "none"
            raise ConfigError(
                f"dataset {name!r} is not in {where} and is not a data file"
                + (f"; did you mean {hint!r}?" if hint else "")
                + f" Available: {available}"
            )
    return attrs


def sha1_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_file(attr: DatasetAttr) -> None:
    """Existence, supported suffix, and (when the registry pins one) the sha1 — before any work starts."""
    if attr.load_from == "hf_hub":
        return
    if attr.load_from == "script":
        raise ConfigError(
            f"dataset {attr.name!r} uses script_url {attr.path!r}: loading scripts run arbitrary code and are not "
            "supported; convert the data to json/jsonl/csv/parquet/txt and register it with file_name"
        )
    path = Path(attr.path)
    if not path.is_file():
        raise ConfigError(f"dataset {attr.name!r}: file not found: {path}")
    if path.suffix not in FILE_SUFFIXES:
        raise ConfigError(f"dataset {attr.name!r}: unsupported file type {path.suffix!r} ({path}); use one of {FILE_SUFFIXES}")
    if attr.file_sha1:
        actual = sha1_of(path)
        if actual != attr.file_sha1:
            # CareGPT only warns here; a changed file is worth knowing about but not worth refusing
            logger.warning("dataset %s: sha1 of %s is %s, registry says %s (file changed?)", attr.name, path, actual, attr.file_sha1)
