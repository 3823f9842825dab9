"""Seeds: from a list, a file or a registered dataset; each (seed, variant) gets a stable id.

The id is a hash of the kind, the prompt templates that shape that kind's output, the system prompt, the
seed and the variant number. Re-running with the same settings gives the same ids, which is what lets a
re-run skip finished records; changing a template gives new ids (new records), on purpose.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from caregpt.config.loader import ConfigError
from caregpt.distill.config import DistillConfig

SEED_FIELDS = ("seed", "topic", "question", "instruction", "text", "content")


@dataclass(frozen=True)
class SeedItem:
    id: str
    seed: str
    variant: int
    index: int  # position in the seed order: output follows it, whatever order requests finish in

    def to_row(self) -> dict:
        return asdict(self)


def seed_id(config: DistillConfig, seed: str, variant: int) -> str:
    shaping = {"kind": config.kind, "templates": config.templates_for_kind(), "system": config.system_prompt or "",
               "seed": seed, "variant": variant}
    if config.kind == "multiturn":
        shaping["turns"] = config.dialogue_turns
    return hashlib.sha256(json.dumps(shaping, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()[:20]


def _from_object(obj: object, field: str | None, loc: str) -> str:
    if isinstance(obj, str):
        return obj
    if not isinstance(obj, dict):
        raise ConfigError(f"{loc}: a seed must be a string or an object, got {type(obj).__name__}")
    if field:
        if field not in obj:
            raise ConfigError(f"{loc}: seed_field {field!r} is missing; fields here: {sorted(obj)[:10]}")
        value = obj[field]
    else:
        present = next((f for f in SEED_FIELDS if f in obj), None)
        if present is None:
            raise ConfigError(f"{loc}: no seed field found (looked for {', '.join(SEED_FIELDS)}); set seed_field")
        value = obj[present]
    if not isinstance(value, str):
        raise ConfigError(f"{loc}: the seed must be a string, got {type(value).__name__}")
    return value


def _seeds_from_file(path: str, field: str | None) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"seeds_file not found: {file}")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".txt":
        return [line.strip() for line in text.splitlines() if line.strip()]
    if file.suffix == ".jsonl":
        seeds = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{file}:{number}: invalid JSON at column {exc.colno}: {exc.msg}") from None
            seeds.append(_from_object(obj, field, f"{file}:{number}"))
        return seeds
    if file.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{file}:{exc.lineno}: invalid JSON at column {exc.colno}: {exc.msg}") from None
        if not isinstance(data, list):
            raise ConfigError(f"{file}: expected a JSON array of seeds, got {type(data).__name__}")
        return [_from_object(obj, field, f"{file}: item {i + 1}") for i, obj in enumerate(data)]
    raise ConfigError(f"seeds_file {file}: unsupported type {file.suffix!r}; use .txt, .jsonl or .json")


def _seeds_from_dataset(config: DistillConfig) -> tuple[list[str], int]:
    """The last user turn of every valid record (the text for text datasets); invalid records are counted."""
    from caregpt.data.formats import dataset_kind, normalize
    from caregpt.data.readers import iter_file_records
    from caregpt.data.registry import check_file, resolve_datasets

    (attr,) = resolve_datasets([config.seed_dataset], config.dataset_dir, config.dataset_info)
    if attr.load_from != "file":
        raise ConfigError(f"seed_dataset {attr.name!r} is not a local file ({attr.load_from}); download it and register it with file_name")
    check_file(attr)
    kind = dataset_kind(attr)
    seeds, invalid = [], 0
    for raw in iter_file_records(attr.path):
        record = normalize(raw.value, raw.loc, attr, kind) if not raw.error else None
        if record is None or record.error:
            invalid += 1
            continue
        if kind == "text":
            seeds.append(record.text)
        else:
            seeds.append(next(c for r, c in zip(reversed(record.roles), reversed(record.contents)) if r == "user"))
    return seeds, invalid


def load_seeds(config: DistillConfig) -> tuple[list[str], int]:
    """(seeds in order, records of a seed dataset that were invalid and skipped)."""
    invalid = 0
    if config.seeds:
        seeds = list(config.seeds)
    elif config.seeds_file:
        seeds = _seeds_from_file(config.seeds_file, config.seed_field)
    else:
        seeds, invalid = _seeds_from_dataset(config)
    seeds = [s.strip() for s in seeds if s and s.strip()]
    if config.max_seeds is not None:
        seeds = seeds[: config.max_seeds]
    if not seeds:
        raise ConfigError("no seeds: the seed source is empty")
    return seeds, invalid


def seed_items(config: DistillConfig, seeds: list[str]) -> tuple[list[SeedItem], int]:
    """One item per (seed, variant); a repeated seed would repeat its ids, so repeats are collapsed and counted."""
    items, seen, repeats = [], set(), 0
    for seed in seeds:
        for variant in range(config.samples_per_seed):
            sid = seed_id(config, seed, variant)
            if sid in seen:
                repeats += 1
                continue
            seen.add(sid)
            items.append(SeedItem(sid, seed, variant, len(items)))
    return items, repeats
