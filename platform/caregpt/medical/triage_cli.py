"""`caregpt triage "症状描述" --guides PATH`: recommend departments of the hospital catalog, with reasons."""

from __future__ import annotations

import json
import sys

from pydantic import AliasChoices, Field

from caregpt.config.loader import ConfigError
from caregpt.config.specs import Spec
from caregpt.config.verb import verb_main
from caregpt.kb.http import EndpointError
from caregpt.medical.catalog import CatalogError, load_catalog

EPILOG = """\
example (the department guides of CareGPT, as shipped in the shared data folder):
  caregpt triage "最近总是咳嗽，有痰，晚上喘不上气" --guides ../shared/data/hospital_guide_departments.json
with a served model re-ranking the retrieved departments:
  caregpt triage "..." --guides ... --base-url http://127.0.0.1:8000/v1 --model caregpt

Triage is guidance for choosing a department, not a diagnosis; for an emergency call the local emergency number."""


class TriageArgs(Spec):
    guides: str
    """Department guide JSON: a list of {"content": ...}, one per catalog department."""

    catalog: str | None = None
    """Department tree text (default: hospital_guide_catalog.txt beside --guides)."""

    k: int = Field(default=3, gt=0)
    """-k: number of departments."""

    no_expand: bool = False
    """Do not add clinical terms for lay words."""

    embed_model: str | None = None
    """Local encoder directory: hybrid BM25 + dense retrieval."""

    base_url: str | None = None
    """OpenAI-compatible base URL of a served model (http://host:port/v1)."""

    model: str | None = None
    """The served model's name (with --base-url)."""

    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's key."""

    as_json: bool = Field(default=False, validation_alias=AliasChoices("json", "as_json"))
    """--json: print the result as JSON."""


USAGE = 'caregpt triage "SYMPTOMS" --guides PATH [--catalog PATH] [-k K] [--no-expand] [--key value ...]'
SUMMARY = ("Recommend hospital departments (导诊) for a description of symptoms, by retrieval over the department guides "
           "and, optionally, re-ranking by a served model.")


def help_text() -> str:
    from caregpt.config.help import render_help

    return render_help(USAGE, SUMMARY, [("Triage", TriageArgs)], EPILOG)


@verb_main("triage", help_text)
def main(argv: list[str]) -> int:
    """Run `caregpt triage`; returns 0 on success, 1 on a bad guide/catalog file, 2 on usage errors."""
    from caregpt.config.loader import load_verb

    parts, positional, _ = load_verb(argv, {"triage": TriageArgs}, verb="triage", positional=1, config_file=False)
    if not positional:
        raise ConfigError('the symptom text is required: caregpt triage "症状描述" --guides PATH')
    args, text = parts["triage"], positional[0]
    if bool(args.base_url) != bool(args.model):
        raise ConfigError("--base-url and --model go together")
    from caregpt.medical.triage import DepartmentTriage
    from caregpt.medical.triage_model import TriageModel

    try:
        catalog = load_catalog(args.guides, args.catalog)
        encoder = None
        if args.embed_model:
            from caregpt.kb.embed import LocalEncoder

            encoder = LocalEncoder(args.embed_model)
        triage = DepartmentTriage(catalog, encoder=encoder, expand=not args.no_expand)
        model = TriageModel(args.base_url, args.model, args.api_key_env) if args.base_url else None
        result = triage.recommend(text, args.k, model)
    except (CatalogError, FileNotFoundError, EndpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"caregpt triage: error: {err}", file=sys.stderr)
        return 2
    if args.as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return 0
    for number, rec in enumerate(result.recommendations, start=1):
        print(f"{number}. {rec.department}（{rec.group}）")
        for reason in rec.reasons:
            print(f"   - {reason}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
