"""`caregpt triage "症状描述" --guides PATH`: recommend departments of the hospital catalog, with reasons."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from caregpt.kb.http import EndpointError
from caregpt.medical.catalog import CatalogError, load_catalog

EPILOG = """\
example (the department guides of CareGPT, as shipped in the shared data folder):
  caregpt triage "最近总是咳嗽，有痰，晚上喘不上气" --guides ../shared/data/hospital_guide_departments.json
with a served model re-ranking the retrieved departments:
  caregpt triage "..." --guides ... --base-url http://127.0.0.1:8000/v1 --model caregpt

Triage is guidance for choosing a department, not a diagnosis; for an emergency call the local emergency number."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caregpt triage",
        description="Recommend hospital departments (导诊) for a description of symptoms, by retrieval over the "
        "department guides and, optionally, re-ranking by a served model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("text", help="the symptoms, in the patient's words")
    parser.add_argument("--guides", required=True, metavar="PATH",
                        help="department guide JSON: a list of {\"content\": ...}, one per catalog department")
    parser.add_argument("--catalog", metavar="PATH", help="department tree text (default: hospital_guide_catalog.txt beside --guides)")
    parser.add_argument("-k", type=int, default=3, help="number of departments (default 3)")
    parser.add_argument("--no-expand", action="store_true", help="do not add clinical terms for lay words")
    parser.add_argument("--embed-model", metavar="DIR", help="local encoder directory: hybrid BM25 + dense retrieval")
    parser.add_argument("--base-url", help="OpenAI-compatible base URL of a served model (http://host:port/v1)")
    parser.add_argument("--model", help="the served model's name (with --base-url)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the endpoint's key")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `caregpt triage`; returns 0 on success, 1 on a bad guide/catalog file, 2 on usage errors."""
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.k <= 0:
        parser.error("-k must be a positive number")
    if bool(args.base_url) != bool(args.model):
        parser.error("--base-url and --model go together")
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
        result = triage.recommend(args.text, args.k, model)
    except (CatalogError, FileNotFoundError, EndpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        parser.error(str(err))
    if args.json:
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
