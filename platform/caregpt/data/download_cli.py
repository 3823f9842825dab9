"""`caregpt data download NAME [NAME ...] [--dir DIR]`: fetch public medical datasets and make them trainable.

    caregpt data download --list
    caregpt data download toyhom_im cmtmedqa_test --dir data
    caregpt data download cmb_exam_val --dir data --sha256 <hash you checked>

For each name: download every file of the registry entry (resumable, with a progress bar, sha256-verified) into
DIR/raw/NAME/, convert it into DIR/NAME.jsonl in the platform's format, and add or replace the NAME entry of
DIR/dataset_info.json (training data only; exam sets are read by `caregpt eval --task choice --data FILE`).
The registry is caregpt/resources/public_datasets.yaml (`--registry` takes another, e.g. a mirror's).

Exit codes: 0 done; 1 a download or conversion failed, or records were invalid; 2 bad arguments.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.parse
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from pydantic import AliasChoices, Field, field_validator

from caregpt.config.specs import Spec
from caregpt.config.verb import verb_main

from caregpt.data.fetch import DownloadError, fetch, sha256_of
from caregpt.data.public_convert import CONVERTERS, convert
from caregpt.data.registry import REGISTRY_FILE, sha1_of

KINDS = ("sft", "pref", "text", "choice", "prompts", "kb")
USAGE_HINT = {
    "sft": "caregpt train --stage sft --dataset {name} --dataset_dir {dir} ...  (or caregpt predict ... --do_eval)",
    "pref": "caregpt train --stage dpo --dataset {name} --dataset_dir {dir} ...",
    "text": "caregpt train --stage pt --dataset {name} --dataset_dir {dir} ...",
    "choice": "caregpt eval --task choice --data {path} --model_name_or_path MODEL",
    "prompts": "prompts without reference answers: review model answers side by side ({path})",
    "kb": "caregpt kb ingest {path} ...",
}


SAFE_NAME = re.compile(r"^[^\W.][\w.-]*$")  # \w is Unicode: 内科.csv is fine, '..' and 'a/b' are not


class RegistryError(ValueError):
    pass


def file_name(url: str) -> str:
    """The file name a URL's path ends in (percent-decoded)."""
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name


def load_registry(path: str | None) -> dict[str, dict[str, Any]]:
    """The dataset registry, checked: every entry names a known kind and converter and lists its files."""
    if path:
        source, text = path, Path(path).read_text(encoding="utf-8")
    else:
        source = "caregpt/resources/public_datasets.yaml"
        text = resources.files("caregpt").joinpath("resources/public_datasets.yaml").read_text(encoding="utf-8")
    registry = yaml.safe_load(text) or {}
    if not isinstance(registry, dict):
        raise RegistryError(f"{source}: expected a mapping of dataset names to entries")
    for name, entry in registry.items():
        where = f"{source}: dataset {name!r}"
        if not (isinstance(name, str) and SAFE_NAME.match(name)):
            raise RegistryError(f"{where}: names are letters, digits, '_', '-' and '.', not starting with '.' (they become file names)")
        if not isinstance(entry, dict):
            raise RegistryError(f"{where}: must be a mapping")
        for key in ("kind", "licence", "convert", "files"):
            if key not in entry:
                raise RegistryError(f"{where}: missing field {key!r}")
        if entry["kind"] not in KINDS:
            raise RegistryError(f"{where}: kind {entry['kind']!r} is not one of {KINDS}")
        if entry["convert"] not in CONVERTERS and entry["convert"] != "copy":
            raise RegistryError(f"{where}: convert {entry['convert']!r} is not one of {sorted(CONVERTERS) + ['copy']}")
        if not isinstance(entry["files"], list) or not entry["files"]:
            raise RegistryError(f"{where}: files must be a non-empty list")
        for index, item in enumerate(entry["files"], start=1):
            if not isinstance(item, dict) or not str(item.get("url", "")).startswith(("http://", "https://")):
                raise RegistryError(f"{where}: file {index} needs an http(s) url")
            if not SAFE_NAME.match(file_name(item["url"])):
                raise RegistryError(f"{where}: file {index}: the url must end in a file name, got {item['url']!r}")
            sha = item.get("sha256")
            if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdefABCDEF" for c in sha)):
                raise RegistryError(f"{where}: file {index}: sha256 must be 64 hex digits or null, got {sha!r}")
    return registry


def print_list(registry: dict[str, dict[str, Any]]) -> None:
    rows = [(name, e["kind"], ", ".join(str(f.get("size", "?")) for f in e["files"]),
             "pinned" if all(f.get("sha256") for f in e["files"]) else "not pinned", str(e["licence"])) for name, e in registry.items()]
    widths = [max(len(r[i]) for r in rows + [("name", "kind", "size", "sha256", "licence")]) for i in range(4)]
    for row in [("name", "kind", "size", "sha256", "licence")] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    print("\nDescriptions and sources: caregpt/resources/public_datasets.yaml. Read each licence before use.")


def merge_dataset_info(directory: Path, name: str, entry: dict[str, Any]) -> Path:
    """Add or replace one entry of DIR/dataset_info.json, keeping the others; written atomically."""
    path = directory / REGISTRY_FILE
    current: dict[str, Any] = {}
    if path.is_file():
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix or move it, nothing was changed") from exc
        if not isinstance(current, dict):
            raise RegistryError(f"{path}: expected an object mapping dataset names to entries; nothing was changed")
    current[name] = entry
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(current, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def download_one(name: str, entry: dict[str, Any], directory: Path, args: SimpleNamespace) -> bool:
    """Fetch, convert and register one dataset; False when something failed (already reported)."""
    print(f"== {name}: {entry.get('description', '')} (licence: {entry['licence']})")
    raw_dir = directory / "raw" / name
    fetched = []
    for item in entry["files"]:
        url = item["url"]
        dest = raw_dir / file_name(url)
        pinned = args.sha256 if (args.sha256 and len(entry["files"]) == 1) else item.get("sha256")
        if dest.is_file() and not args.force:
            print(f"   {dest} already downloaded (--force to fetch again); verifying")
            actual = sha256_of(dest)
            if pinned and actual != pinned.lower():
                print(f"error: {dest}: sha256 {actual} does not match the pinned {pinned}; remove it or use --force", file=sys.stderr)
                return False
            fetched.append((dest, actual, pinned))
            continue
        try:
            result = fetch(url, dest, sha256=pinned, size_bytes=item.get("size_bytes"), retries=args.retries,
                           timeout=args.timeout, label=f"   {dest.name}")
        except DownloadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return False
        resumed = f", resumed from byte {result.resumed_from}" if result.resumed_from else ""
        print(f"   downloaded {result.size:,} bytes{resumed} -> {dest}")
        fetched.append((dest, result.sha256, pinned))
    for dest, actual, pinned in fetched:
        if pinned:
            print(f"   sha256 verified: {actual}")
        else:
            print(f"   sha256 {actual} ({dest.name}) is NOT pinned in the registry: check the file against its source, "
                  f"then pin it (--sha256 {actual}, or `sha256: {actual}` in a registry copy passed with --registry)")
    try:
        result = convert(name, entry["convert"], entry["kind"], [d for d, _, _ in fetched], directory)
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {name}: conversion failed: {exc}", file=sys.stderr)
        return False
    print(f"   converted: {result.written:,} records -> {result.path}" + (f"; {result.invalid:,} invalid, left out" if result.invalid else ""))
    for example in result.examples:
        print(f"     invalid: {example}")
    if result.written == 0:
        print(f"error: {name}: no record could be converted (is this the layout the registry's converter "
              f"{entry['convert']!r} expects?); nothing was registered", file=sys.stderr)
        return False
    if result.entry is not None:
        result.entry["file_sha1"] = sha1_of(result.path)
        print(f"   registered {name!r} in {merge_dataset_info(directory, name, result.entry)}")
    (raw_dir / "SOURCE.json").write_text(json.dumps({
        "name": name, "licence": entry["licence"], "source": entry.get("source"),
        "files": [{"url": item["url"], "sha256": actual, "pinned": bool(pinned)} for item, (_, actual, pinned) in zip(entry["files"], fetched)],
        "downloaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "converted": {"file": result.path.name, "records": result.written, "invalid": result.invalid},
    }, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print("   use: " + USAGE_HINT[entry["kind"]].format(name=name, dir=directory, path=result.path))
    return result.invalid == 0 or args.allow_invalid


class DownloadArgs(Spec):
    show_list: bool = Field(default=False, validation_alias=AliasChoices("list", "show_list"))
    """--list: list the datasets: name, kind, size, sha256 pinned or not, licence."""

    dir: str = "data"
    """Where data goes: DIR/raw/NAME/ downloads, DIR/NAME.jsonl, DIR/dataset_info.json."""

    sha256: str | None = None
    """Expected sha256 (64 hex digits) of the (single) file of the one NAME given: overrides the registry; a mismatch
    is refused."""

    force: bool = False
    """Download again even when DIR/raw/NAME already holds the file."""

    registry: str | None = None
    """A registry YAML to use instead of the built-in one (same layout; e.g. a mirror's URLs)."""

    retries: int = Field(default=5, ge=0)
    """Times a cut connection is resumed within one run."""

    timeout: float = Field(default=60.0, gt=0)
    """Seconds without data before a connection counts as cut."""

    allow_invalid: bool = False
    """Exit 0 even when some records were invalid (they are left out either way)."""

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("must be 64 hex digits")
        return value


USAGE = "caregpt data download NAME [NAME ...] [--dir DIR] [--key value ...] | --list"
SUMMARY = ("Download public medical datasets from their published locations (resumable, sha256-verified), convert them "
           "into the platform's formats and register them in DIR/dataset_info.json. `--list` shows what is available.")
EPILOG = "Licences differ (some are non-commercial or unstated): --list shows each; read the source's terms before use."


def help_text() -> str:
    from caregpt.config.help import render_help

    return render_help(USAGE, SUMMARY + "\n\n" + (__doc__ or "").split("\n\n", 2)[2].strip(), [("Download", DownloadArgs)], EPILOG)


@verb_main("data download", help_text)
def main(argv: list[str]) -> int:
    from caregpt.config.loader import load_verb

    parts, names, _ = load_verb(argv, {"download": DownloadArgs}, verb="data download", positional=1_000_000, config_file=False)
    args = SimpleNamespace(**parts["download"].model_dump(), names=names)
    try:
        registry = load_registry(args.registry)
    except (RegistryError, OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.show_list:
        print_list(registry)
        return 0
    if not args.names:
        print(f"usage: {USAGE}", file=sys.stderr)
        print("error: name at least one dataset (see --list)", file=sys.stderr)
        return 2
    unknown = [n for n in args.names if n not in registry]
    if unknown:
        from caregpt.config.loader import nearest_key

        hints = [f"{n!r}" + (f" (did you mean {nearest_key(n, list(registry))!r}?)" if nearest_key(n, list(registry)) else "") for n in unknown]
        print(f"error: unknown dataset(s) {', '.join(hints)}; see `caregpt data download --list`", file=sys.stderr)
        return 2
    if args.sha256 and (len(args.names) != 1 or len(registry[args.names[0]]["files"]) != 1):
        print("error: --sha256 pins one file: give exactly one NAME whose entry has a single file", file=sys.stderr)
        return 2
    directory = Path(args.dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    ok = True
    for name in args.names:
        try:
            ok = download_one(name, registry[name], directory, args) and ok
        except RegistryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
