"""`caregpt kb ingest|search|info`: build and query a knowledge base from the command line.

    caregpt kb ingest --kb DIR FILES_OR_DIRS... [--chunk-size 300] [--overlap 50] [--fields content]
                      [--embed-model LOCAL_DIR | --embed-url URL --embed-name MODEL] [--prune]
    caregpt kb search --kb DIR "query" [-k 5] [--mode auto|bm25|dense|hybrid] [--json]
    caregpt kb info --kb DIR
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Literal

from pydantic import AliasChoices, Field

from caregpt._extras import require
from caregpt.config.fields import CommaList, Spec
from caregpt.config.loader import ConfigError
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


class KbArgs(Spec):
    kb: str
    """Knowledge base directory (ingest creates it if missing)."""


class IngestArgs(KbArgs):
    chunk_size: int | None = None
    """Max characters per chunk (default 300; fixed at creation)."""

    overlap: int | None = None
    """Characters shared by consecutive chunks (default 50)."""

    fields: CommaList[str] | None = None
    """Comma-separated json/jsonl fields holding the text (default: content)."""

    embed_model: str | None = None
    """Local Hugging Face encoder directory for dense vectors."""

    embed_url: str | None = None
    """OpenAI-compatible base URL (http://host:port/v1) for /embeddings."""

    embed_name: str | None = None
    """Model name sent to --embed-url."""

    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's key."""

    prune: bool = False
    """Remove files that were ingested before and no longer exist."""

    as_json: bool = Field(default=False, validation_alias=AliasChoices("json", "as_json"))
    """--json: print the report as JSON."""


class SearchArgs(KbArgs):
    k: int = Field(default=5, gt=0)
    """-k: number of chunks."""

    mode: Literal["auto", "bm25", "dense", "hybrid"] = "auto"
    """auto: hybrid when the knowledge base has vectors, else bm25."""

    as_json: bool = Field(default=False, validation_alias=AliasChoices("json", "as_json"))
    """--json: print hits as JSON."""


# verb -> (spec, positional arguments allowed, usage, one-line help)
VERBS = {
    "ingest": (IngestArgs, 1_000_000, "caregpt kb ingest --kb DIR FILES_OR_DIRS... [--key value ...]", "add or update files and folders"),
    "search": (SearchArgs, 1, 'caregpt kb search --kb DIR "QUERY" [-k 5] [--mode auto|bm25|dense|hybrid] [--json]',
               "retrieve the best chunks for a query"),
    "info": (KbArgs, 0, "caregpt kb info --kb DIR", "counts, chunking settings and encoder of a knowledge base"),
}
USAGE = "caregpt kb {ingest,search,info} ..."


def _help(verb: str | None) -> str:
    from caregpt.config.help import render_help

    if verb is None:
        lines = [f"  {name:<7} {text}" for name, (_, _, _, text) in VERBS.items()]
        return render_help(USAGE, DESCRIPTION, [], "verbs:\n" + "\n".join(lines) + "\n\n`caregpt kb VERB --help` lists its options.")
    spec, _, usage, text = VERBS[verb]
    return render_help(usage, DESCRIPTION, [(verb.capitalize(), spec)])


def _parse(verb: str, argv: list[str]):
    from caregpt.config.loader import load_verb

    spec, count, _, _ = VERBS[verb]
    parts, positional, _ = load_verb(argv, {verb: spec}, verb=f"kb {verb}", positional=count, config_file=False)
    args = SimpleNamespace(**parts[verb].model_dump(), verb=verb)
    if verb == "ingest":
        if not positional:
            raise ConfigError("ingest needs FILES_OR_DIRS: files, or folders read recursively")
        args.inputs = positional
    if verb == "search":
        if not positional:
            raise ConfigError('search needs the query: caregpt kb search --kb DIR "QUERY"')
        args.query = positional[0]
    return args


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

    fields = args.fields or None
    try:
        report = ingest(args.kb, args.inputs, args.chunk_size, args.overlap, fields, _encoder(args), args.prune)
    except ValueError as err:  # chunk settings out of range
        raise KnowledgeBaseError(str(err)) from None
    print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) if args.as_json else report.summary())
    nothing_usable = not (report.added or report.updated or report.unchanged or report.removed)
    return 1 if nothing_usable and report.skipped else 0


def _search(args) -> int:
    kb = KnowledgeBase.open(args.kb)
    if kb.empty:
        print(f"knowledge base {args.kb} is empty: add documents with `caregpt kb ingest --kb {args.kb} FILES`",
              file=sys.stderr)
        return 1
    hits = kb.search(args.query, args.k, args.mode)
    if args.as_json:
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
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = argv[0] if argv and argv[0] in VERBS else None
    if any(a in ("-h", "--help") for a in argv):
        print(_help(verb))
        return 0
    if not argv:
        print(_help(None))
        return 2
    if verb is None:
        shown = f"unknown verb {argv[0]!r}; " if argv else ""
        print(f"caregpt kb: error: {shown}choose one of ingest, search, info (`caregpt kb --help`)", file=sys.stderr)
        return 2
    try:
        args = _parse(verb, argv[1:])
    except ConfigError as exc:
        print(f"caregpt kb {verb}: error: {exc}", file=sys.stderr)
        return 2
    # every verb ends in (or checks) the BM25 index: without the [kb] extra say so before any work
    require("bm25s", extra="kb", purpose="the knowledge base (caregpt kb)")
    try:
        return {"ingest": _ingest, "search": _search, "info": _info}[args.verb](args)
    except KnowledgeBaseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
