"""The hospital department catalog: department names, their groups, and one guide text per department.

The catalog comes from two files a user points at (CareGPT's hospital guide, e.g.
../shared/data/hospital_guide_departments.json and hospital_guide_catalog.txt beside it); nothing of
it is shipped in this package. The catalog text lists groups as `【内科：】全科医学 心内科 ...` (a line
without a 【group】 holds departments that are their own group); the guide file is a JSON list of
{"content": ...} in the same order as the catalog's departments.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

CATALOG_NAME = "hospital_guide_catalog.txt"
_GROUP = re.compile(r"^【(?P<group>[^】：:]+)[：:]?】\s*(?P<names>.*)$")


class CatalogError(ValueError):
    """The guide or catalog file is missing or not in the expected shape."""


@dataclass(frozen=True)
class Department:
    name: str
    group: str  # the catalog group (内科, 外科, ...); the department's own name for ungrouped ones
    guide: str  # the guide text: what the department treats and how it relates to others


@dataclass(frozen=True)
class Catalog:
    departments: tuple[Department, ...]

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.departments]

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for d in self.departments:
            out.setdefault(d.group, []).append(d.name)
        return out

    def get(self, name: str) -> Department:
        for d in self.departments:
            if d.name == name:
                return d
        raise KeyError(f"{name!r} is not a catalog department (valid: {' '.join(self.names)})")


def parse_catalog_text(text: str) -> list[tuple[str, str]]:
    """(department, group) pairs in catalog order."""
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or ("【" in line and not _GROUP.match(line)):
            continue  # blank lines and annotations such as 不包含【内容】
        match = _GROUP.match(line)
        if match:
            pairs += [(name, match["group"]) for name in match["names"].split()]
        else:
            pairs += [(name, name) for name in line.split()]
    return pairs


def load_catalog(guides: str | Path, catalog: str | Path | None = None) -> Catalog:
    """Read the guide JSON and the catalog text (default: hospital_guide_catalog.txt beside the guides)."""
    guides = Path(guides)
    catalog = Path(catalog) if catalog else guides.with_name(CATALOG_NAME)
    for path, what in ((guides, "guide JSON (a list of {\"content\": ...})"), (catalog, "catalog text")):
        if not path.is_file():
            raise CatalogError(f"{path}: not found; expected the department {what}")
    try:
        records = json.loads(guides.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CatalogError(f"{guides}: not valid UTF-8 JSON ({err})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("content"), str) for r in records):
        raise CatalogError(f"{guides}: expected a JSON list of objects with a string field 'content'")
    pairs = parse_catalog_text(catalog.read_text(encoding="utf-8"))
    if len(pairs) != len(records):
        raise CatalogError(
            f"{catalog} lists {len(pairs)} departments but {guides} has {len(records)} guides; "
            "the guide file must hold one guide per catalog department, in catalog order"
        )
    departments = tuple(Department(name, group, r["content"].strip()) for (name, group), r in zip(pairs, records))
    _check_alignment(departments, guides)
    return Catalog(departments)


def _check_alignment(departments: tuple[Department, ...], guides: Path) -> None:
    """Guides are matched to names by position, so check that most guides mention their own department."""
    def mentions(d: Department) -> bool:
        stem = d.name[:-1] if d.name.endswith("科") and len(d.name) > 2 else d.name
        return d.name in d.guide or stem in d.guide

    misses = [d.name for d in departments if not mentions(d)]
    if len(misses) > len(departments) // 10:
        raise CatalogError(f"{guides}: guides do not follow the catalog order (no mention of {', '.join(misses[:5])} ...)")
