"""Tokenization of canonical records, one batch at a time.

The same `BatchTokenizer` runs inside Ray Data actors (tokenizer loaded once per actor) and in plain
Python (tests, benchmarks): one code path, so the pipeline's token ids are by construction those of
a direct call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from caregpt.data.templates import IGNORE_INDEX, get_template

CHUNK_ROWS = 512
TOKEN_COLUMNS = {
    "text": ("input_ids", "labels"),
    "sft": ("input_ids", "labels"),
    "pref": ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"),
}


def load_tokenizer(path: str, trust_remote_code: bool = False, use_fast: bool = True):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, use_fast=use_fast)
    if tokenizer.pad_token is None:
        # many base models ship without a pad token; padding positions are masked, so eos is safe
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _messages(roles: Any, contents: Any) -> list[dict[str, str]]:
    return [{"role": str(r), "content": str(c)} for r, c in zip(roles, contents)]


class BatchTokenizer:
    """Callable for `Dataset.map_batches`: canonical record columns in, token columns out.

    Output per row: loc, dataset, token columns (see TOKEN_COLUMNS), `length` (tokens after
    truncation), `raw_length` (before) and `truncated`. A pretraining document longer than
    cutoff_len becomes several rows (its tokens are split, not thrown away).
    """

    def __init__(self, tokenizer_path: str, kind: str, template: str, cutoff_len: int, trust_remote_code: bool = False, tokenizer=None):
        self.tokenizer = tokenizer or load_tokenizer(tokenizer_path, trust_remote_code)
        self.kind = kind
        self.cutoff_len = cutoff_len
        self.template = None if kind == "text" else get_template(template, self.tokenizer)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        out: dict[str, list] = {name: [] for name in ("loc", "dataset", "length", "raw_length", "truncated", *TOKEN_COLUMNS[self.kind])}
        encode = {"text": self._text, "sft": self._sft, "pref": self._pref}[self.kind]
        rows = len(batch["loc"])
        # the pipeline hands over whole blocks (one read range each); the tokenizer still sees
        # CHUNK rows per call, which bounds the memory of one call and keeps its batching efficient
        for start in range(0, rows, CHUNK_ROWS):
            encode({k: v[start : start + CHUNK_ROWS] for k, v in batch.items()}, out)
        return out

    def _text(self, batch: dict[str, Any], out: dict[str, list]) -> None:
        eos = self.tokenizer.eos_token_id
        encoded = self.tokenizer(list(map(str, batch["text"])), add_special_tokens=False)["input_ids"]
        for loc, dataset, ids in zip(batch["loc"], batch["dataset"], encoded):
            ids = list(ids) + ([eos] if eos is not None else [])
            for start in range(0, len(ids), self.cutoff_len):
                piece = ids[start : start + self.cutoff_len]
                if len(piece) < 2 and start > 0:
                    break  # a lone trailing eos predicts nothing
                # continuation chunks carry raw_length -1 so statistics count each document once
                raw = len(ids) if start == 0 else -1
                self._emit(out, loc, dataset, raw, len(ids) > self.cutoff_len, input_ids=piece, labels=list(piece))

    def _encode_all(self, conversations: list[list[dict[str, str]]]) -> list[tuple[Any, int]]:
        """(encoded within cutoff_len, untruncated length) per conversation, one tokenizer call."""
        full = self.template.encode_batch(self.tokenizer, conversations)
        out = []
        for messages, encoded in zip(conversations, full):
            raw = len(encoded.input_ids)
            if raw > self.cutoff_len:
                encoded = self.template.encode(self.tokenizer, messages, cutoff_len=self.cutoff_len)
            out.append((encoded, raw))
        return out

    def _sft(self, batch: dict[str, Any], out: dict[str, list]) -> None:
        conversations = [_messages(r, c) for r, c in zip(batch["roles"], batch["contents"])]
        for loc, dataset, (encoded, raw) in zip(batch["loc"], batch["dataset"], self._encode_all(conversations)):
            self._emit(out, loc, dataset, raw, encoded.truncated, input_ids=encoded.input_ids, labels=encoded.labels)

    def _pref(self, batch: dict[str, Any], out: dict[str, list]) -> None:
        prompts = [_messages(r, c) for r, c in zip(batch["roles"], batch["contents"])]
        goods = self._encode_all([p + [{"role": "assistant", "content": str(a)}] for p, a in zip(prompts, batch["chosen"])])
        bads = self._encode_all([p + [{"role": "assistant", "content": str(a)}] for p, a in zip(prompts, batch["rejected"])])
        for loc, dataset, (good, raw_good), (bad, raw_bad) in zip(batch["loc"], batch["dataset"], goods, bads):
            self._emit(
                out, loc, dataset, max(raw_good, raw_bad), good.truncated or bad.truncated,
                chosen_input_ids=good.input_ids, chosen_labels=good.labels,
                rejected_input_ids=bad.input_ids, rejected_labels=bad.labels,
            )

    @staticmethod
    def _emit(out: dict[str, list], loc: str, dataset: str, raw_length: int, truncated: bool, **columns: list[int]) -> None:
        out["loc"].append(str(loc))
        out["dataset"].append(str(dataset))
        out["raw_length"].append(int(raw_length))
        out["truncated"].append(bool(truncated))
        out["length"].append(max(len(v) for v in columns.values()))
        for name, ids in columns.items():
            out[name].append(list(ids))


class ArrowBatchTokenizer(BatchTokenizer):
    """The Ray Data form: returns an Arrow table with int32 token lists (half the memory of int64,
    and plain list columns rather than Ray's ragged-tensor extension type, so parquet stays portable)."""

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        out = super().__call__(batch)
        columns = {}
        for name, values in out.items():
            if name in ("loc", "dataset"):
                columns[name] = pa.array(values, type=pa.string())
            elif name == "truncated":
                columns[name] = pa.array(values, type=pa.bool_())
            elif name in ("length", "raw_length"):
                columns[name] = pa.array(values, type=pa.int32())
            else:
                columns[name] = pa.array(values, type=pa.list_(pa.int32()))
        return pa.table(columns)


def trainable_tokens(labels: list[int] | np.ndarray) -> int:
    return int((np.asarray(labels) != IGNORE_INDEX).sum())


def _tokenizer_files_signature(path: str) -> tuple:
    """Name, size and mtime of the tokenizer's files: a tokenizer rewritten at the same path is loaded again."""
    from pathlib import Path

    folder = Path(path)
    if not folder.is_dir():
        return (path,)
    return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()
                        if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".pt", ".gguf"))))


_CACHED: dict[tuple, ArrowBatchTokenizer] = {}


def tokenize_block(batch: dict[str, Any], *, tokenizer_path: str, kind: str, template: str, cutoff_len: int,
                   trust_remote_code: bool = False) -> pa.Table:
    """A Ray Data task: one block -> token rows. The tokenizer is loaded once per worker process and kept:
    Ray reuses its worker processes across tasks and runs, so a warm cluster tokenizes with no start-up
    (an actor pool started new processes, importing transformers, for every dataset: ~2 s each)."""
    key = (tokenizer_path, kind, template, cutoff_len, trust_remote_code, _tokenizer_files_signature(tokenizer_path))
    tokenizer = _CACHED.get(key)
    if tokenizer is None:
        if len(_CACHED) >= 4:  # a long-lived worker serves many runs: keep a few, not every one
            _CACHED.pop(next(iter(_CACHED)))
        tokenizer = _CACHED[key] = ArrowBatchTokenizer(tokenizer_path, kind, template, cutoff_len, trust_remote_code)
    return tokenizer(batch)
