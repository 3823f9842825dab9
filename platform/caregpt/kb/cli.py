"""`caregpt kb ingest|search|info`: build and query a knowledge base from the command line.

    caregpt kb ingest --kb DIR FILES_OR_DIRS... [--chunk-size 300] [--overlap 50] [--fields content]
                      [--embed-model LOCAL_DIR | --embed-url URL --embed-name MODEL] [--prune]
    caregpt kb search --kb DIR "query" [-k 5] [--mode auto|bm25|dense|hybrid] [--json]
    caregpt kb info --kb DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from caregpt._extras import require
from caregpt.kb.base import KnowledgeBase, KnowledgeBaseError
from caregpt.kb.loaders import SUPPORTED_SUFFIXES

DESCRIPTION = f"""\
Knowledge base for retrieval-augmented answers with citations.
Files: {', '.join(SUPPORTED_SUFFIXES)} (json/jsonl: one document per record, text from --fields).
Text is split into chunks on sentence boundaries (。！？；, line breaks, . ! ?) and indexed for BM25 over
jieba tokens; with an encoder, also as dense vectors, and search fuses both by reciprocal rank.
Re-running ingest skips unchanged files (content hash), replaces changed ones, and with --prune removes
files that were deleted. Everything that could not be used is listed with the reason.

examples:
  caregpt kb ingest --kb kb/guides ../shared/data/hospital_guide_departments.json
  caregpt kb search --kb kb/guides "皮肤起了红疹，很痒" -k 3
  caregpt kb info --kb kb/guides"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caregpt kb", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    verbs = parser.add_subparsers(dest="verb", metavar="{ingest,search,info}")

    ingest = verbs.add_parser("ingest", help="add or update files and folders", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    ingest.add_argument("--kb", required=True, help="knowledge base directory (created if missing)")
    ingest.add_argument("inputs", nargs="+", metavar="FILES_OR_DIRS", help="files, or folders read recursively")
    ingest.add_argument("--chunk-size", type=int, help="max characters per chunk (default 300; fixed at creation)")
    ingest.add_argument("--overlap", type=int, help="characters shared by consecutive chunks (default 50)")
    ingest.add_argument("--fields", help="comma-separated json/jsonl fields holding the text (default: content)")
    ingest.add_argument("--embed-model", metavar="DIR", help="local Hugging Face encoder directory for dense vectors")
    ingest.add_argument("--embed-url", metavar="URL", help="OpenAI-compatible base URL (http://host:port/v1) for /embeddings")
    ingest.add_argument("--embed-name", metavar="MODEL", help="model name sent to --embed-url")
    ingest.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the endpoint's key")
    ingest.add_argument("--prune", action="store_true", help="remove files that were ingested before and no longer exist")
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")

    search = verbs.add_parser("search", help="retrieve the best chunks for a query")
    search.add_argument("--kb", required=True, help="knowledge base directory")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="number of chunks (default 5)")
    search.add_argument("--mode", default="auto", choices=("auto", "bm25", "dense", "hybrid"),
                        help="auto: hybrid when the knowledge base has vectors, else bm25")
    search.add_argument("--json", action="store_true", help="print hits as JSON")

    info = verbs.add_parser("info", help="counts, chunking settings and encoder of a knowledge base")
    info.add_argument("--kb", required=True, help="knowledge base directory")
    return parser


def _encoder(args):
    if args.embed_model and args.embed_url:
        raise KnowledgeBaseError("give either --embed-model (local) or --embed-url (endpoint), not both")
    if args.embed_model:
        from caregpt.kb.embed import LocalEncoder

        try:
            return LocalEncoder(args.embed_model)
        except FileNotFoundError as err:
            raise KnowledgeBaseError(str(err)) from None
    if args.embed_url:
        if not args.embed_name:
            raise KnowledgeBaseError("--embed-url needs --embed-name (the embedding model's name on that server)")
        from caregpt.kb.embed import EndpointEncoder

        return EndpointEncoder(args.embed_url, args.embed_name, args.api_key_env)
    return None


def _ingest(args) -> int:
    from caregpt.kb.ingest import ingest

    fields = [f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else None
    try:
        report = ingest(args.kb, args.inputs, args.chunk_size, args.overlap, fields, _encoder(args), args.prune)
    except ValueError as err:  # chunk settings out of range
        raise KnowledgeBaseError(str(err)) from None
    print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) if args.json else report.summary())
    nothing_usable = not (report.added or report.updated or report.unchanged or report.removed)
    return 1 if nothing_usable and report.skipped else 0


def _search(args) -> int:
    kb = KnowledgeBase.open(args.kb)
    if kb.empty:
        print(f"knowledge base {args.kb} is empty: add documents with `caregpt kb ingest --kb {args.kb} FILES`",
              file=sys.stderr)
        return 1
    hits = kb.search(args.query, args.k, args.mode)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], ensure_ascii=False, indent=2))
        return 0
    if not hits:
        print("no chunk matches the query (no query word occurs in the knowledge base)")
    for rank, hit in enumerate(hits, start=1):
        print(f"[{rank}] {hit.doc_id} chunk {hit.chunk_id}  score {hit.score:.4f}\n    {hit.text}")
    return 0


def _info(args) -> int:
    print(json.dumps(KnowledgeBase.open(args.kb).info(), ensure_ascii=False, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `caregpt kb ...`; returns the exit code (0 ok, 1 failed or nothing found to use, 2 usage)."""
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.verb is None:
        parser.print_help()
        return 2
    if getattr(args, "k", 1) <= 0:
        parser.error("-k must be a positive number")
    # every verb ends in (or checks) the BM25 index: without the [kb] extra say so before any work
    require("bm25s", extra="kb", purpose="the knowledge base (caregpt kb)")
    try:
        return {"ingest": _ingest, "search": _search, "info": _info}[args.verb](args)
    except KnowledgeBaseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
