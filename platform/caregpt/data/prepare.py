"""`caregpt data prepare`: tokenize a corpus once into parquet and reuse it.

The copy is keyed by a fingerprint of everything that changes the tokens (data files, tokenizer,
template, cutoff, packing, sampling); training reuses a matching copy, `overwrite_cache` forces a
redo. Counts (records used and rejected) travel with the copy in its manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from caregpt.config.specs import RunConfig, keys_with
from caregpt.data.check import DataReport, count_records, require_valid
from caregpt.data.pipeline import DataPlan, build_records, plan_data, tokenize_records

MANIFEST = "caregpt_tokenized.json"
DATA_KEYS = keys_with(role="data")  # the keys that change the tokens


def default_cache_root() -> Path:
    return Path(os.environ.get("CAREGPT_CACHE", Path.home() / ".cache" / "caregpt")) / "tokenized"


def _file_identity(path: str) -> dict[str, Any]:
    stat = Path(path).stat()
    return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _tokenizer_identity(tokenizer_path: str) -> str:
    digest = hashlib.sha1()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
        file = Path(tokenizer_path) / name
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest() if digest.digest() != hashlib.sha1().digest() else tokenizer_path


def fingerprint(config: RunConfig, plan: DataPlan, tokenizer_path: str) -> str:
    """Every key declared role="data" (config/specs.py) plus what the files and the tokenizer really hold."""
    flat = config.flat()
    key = {name: flat[name] for name in DATA_KEYS if name not in ("model_name_or_path", "dataset", "dataset_dir", "dataset_info")}
    key.update(
        kind=plan.kind,
        datasets=[_file_identity(a.path) if a.load_from == "file" else a.path for a in plan.attrs],
        columns=[a.columns for a in plan.attrs],
        tokenizer=_tokenizer_identity(tokenizer_path),  # the model directory's tokenizer files, not its path
        version=2,
    )
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepared_path(config: RunConfig, plan: DataPlan, tokenizer_path: str, cache_root: Path | None = None) -> Path:
    if config.data.tokenized_path:
        return Path(config.data.tokenized_path)
    return (cache_root or default_cache_root()) / fingerprint(config, plan, tokenizer_path)


def read_manifest(path: Path) -> dict[str, Any] | None:
    file = path / MANIFEST
    return json.loads(file.read_text()) if file.is_file() else None


def prepare(config: RunConfig, tokenizer_path: str, num_workers: int | None = None, cache_root: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Tokenize (unless a matching copy exists) and return (parquet dir, manifest)."""
    plan = plan_data(config)
    target = prepared_path(config, plan, tokenizer_path, cache_root)
    expected = fingerprint(config, plan, tokenizer_path)
    manifest = read_manifest(target)
    if manifest and manifest.get("fingerprint") == expected and not config.data.overwrite_cache:
        return target, manifest
    records = build_records(config, plan)
    report: DataReport = count_records(records, plan)
    require_valid(report, config.data.skip_invalid)
    if target.exists():
        shutil.rmtree(target)
    start = time.perf_counter()
    # write under a temporary name and rename: a crash never leaves a half copy that looks complete
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenize_records(records, config, plan, tokenizer_path, num_workers).write_parquet(str(partial))
    manifest = {
        "fingerprint": expected,
        "kind": plan.kind,
        "packing": config.data.packing,
        "cutoff_len": config.data.cutoff_len,
        "template": config.data.template,
        "tokenizer": tokenizer_path,
        "datasets": [a.name for a in plan.attrs],
        "records": report.records,
        "records_rejected": report.invalid,
        "records_used": report.records - report.invalid,
        "seconds": round(time.perf_counter() - start, 2),
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    partial.rename(target)
    return target, manifest


def load_prepared(path: str | Path):
    import ray.data

    files = sorted(str(p) for p in Path(path).glob("*.parquet"))
    return ray.data.read_parquet(files)
