"""Train a small byte-level BPE tokenizer on local medical text.

The scratch models built by :mod:`caregpt.models.tiny` need a tokenizer, and there is no model
hub to download one from, so we train one on whatever corpus the user points at.

Design choices:

* **Byte-level BPE** (``tokenizers`` library): every UTF-8 byte is in the base alphabet, so any
  text (Chinese, English, emoji, control characters) encodes without an unknown token and
  ``decode(encode(text)) == text`` holds exactly. No normalizer is used for the same reason.
* **No automatic BOS/EOS**: ``tokenizer(text)`` returns only the text's tokens. Chat formatting
  is done by the ChatML ``chat_template``; pretraining code adds document separators itself.
* **Special tokens**, in id order 0..4: ``<s>`` (bos), ``</s>`` (end of document),
  ``<pad>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (eos: generation stops at the end of a turn).
* **Chat template**: ChatML with ``add_generation_prompt`` support. Assistant turns are wrapped in
  ``{% generation %}`` blocks, so ``apply_chat_template(..., return_assistant_tokens_mask=True)``
  (and TRL's assistant-only loss) work.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger("caregpt.models.tokenizer_train")

BOS_TOKEN = "<s>"
EOS_DOC_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
#: Special tokens in id order (ids 0..4 in every tokenizer trained here).
SPECIAL_TOKENS: tuple[str, ...] = (BOS_TOKEN, EOS_DOC_TOKEN, PAD_TOKEN, IM_START_TOKEN, IM_END_TOKEN)

SUPPORTED_SUFFIXES: tuple[str, ...] = (".txt", ".json", ".jsonl", ".csv")

#: ChatML template. Message content may be a string, None, or a list of OpenAI-style parts
#: (only ``{"type": "text"}`` parts are rendered). No default system prompt is injected.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set content = message['content'] -%}"
    "{%- elif message['content'] is none -%}"
    "{%- set content = '' -%}"
    "{%- else -%}"
    "{%- set content = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{{- content + '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


# --------------------------------------------------------------------------------------------
# Corpus reading
# --------------------------------------------------------------------------------------------


def _strings_in(value: Any) -> Iterator[str]:
    """Yield every non-blank string found in a JSON value (dict values and list items, recursively)."""
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings_in(item)
    # numbers, booleans and null carry no text


def _iter_txt(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8-sig") as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if line.strip():
                yield line


def _iter_jsonl(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from exc
            yield from _strings_in(record)


def _iter_json(path: Path) -> Iterator[str]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # Many "medical .json" datasets are really JSON lines; accept those too.
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(
                    f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}) "
                    f"and not JSON lines either (line {lineno})"
                ) from exc
        data = records
    # A top-level list is a list of records; anything else is one record.
    yield from _strings_in(data)


def _iter_csv(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        for row in csv.reader(fh):
            for cell in row:
                if cell.strip():
                    yield cell


_READERS = {".txt": _iter_txt, ".jsonl": _iter_jsonl, ".json": _iter_json, ".csv": _iter_csv}


def _check_corpus_path(path: str | Path) -> Path:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _READERS:
        raise ValueError(
            f"unsupported corpus file {str(p)!r}: suffix {p.suffix or '(none)'!r} is not one of "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not p.exists():
        raise FileNotFoundError(f"corpus file not found: {str(p)!r}")
    if not p.is_file():
        raise ValueError(f"corpus path {str(p)!r} is not a regular file")
    return p


def iter_corpus_text(paths: Iterable[str | Path]) -> Iterator[str]:
    """Yield the text documents/strings contained in corpus files, in file order.

    * ``.txt``: one document per line; blank lines are skipped.
    * ``.jsonl``: one JSON record per line; every string value in each record is yielded
      (recursively, so ``history`` pairs and ``output`` lists are included).
    * ``.json``: a JSON array of records (or one object); same rule. A ``.json`` file that is
      really JSON lines is accepted as well.
    * ``.csv``: every non-empty cell (header row included).

    Files are read as UTF-8 (a BOM is tolerated). All paths are validated before anything is
    yielded, so a typo in the last file fails fast. Raises ``ValueError`` naming the file for an
    unsupported suffix, invalid JSON or non-UTF-8 content, ``FileNotFoundError`` for a missing file.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    checked = [_check_corpus_path(p) for p in paths]
    for path in checked:
        reader = _READERS[path.suffix.lower()]
        try:
            yield from reader(path)
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                "re-encode the file as UTF-8 (e.g. from GB18030)"
            ) from exc


# --------------------------------------------------------------------------------------------
# Tokenizer training
# --------------------------------------------------------------------------------------------


def train_tokenizer(
    paths: Iterable[str | Path],
    vocab_size: int,
    output_dir: str | Path | None = None,
    *,
    model_max_length: int | None = None,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the corpus files and wrap it for ``transformers``.

    Args:
        paths: corpus files (see :func:`iter_corpus_text`).
        vocab_size: target vocabulary size, special tokens and the 256 byte symbols included.
            A small corpus may yield fewer tokens (BPE stops when no pair reaches
            ``min_frequency``); ``len(tokenizer)`` is the real size.
        output_dir: if given, the tokenizer is saved there (``save_pretrained``).
        model_max_length: recorded in the tokenizer config (callers pass the model's max positions).
        min_frequency: minimum pair count for a BPE merge.

    Returns:
        A ``PreTrainedTokenizerFast`` with bos ``<s>``, eos ``<|im_end|>``, pad ``<pad>``,
        ``</s>`` and ``<|im_start|>`` as extra special tokens, and a ChatML ``chat_template``.
        Training is deterministic for a given corpus and settings.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    min_vocab = 256 + len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, int) or vocab_size < min_vocab:
        raise ValueError(f"vocab_size must be an int >= {min_vocab} (256 bytes + special tokens), got {vocab_size!r}")
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("train_tokenizer needs at least one corpus file")
    for p in paths:  # fail before training starts, with the file's name
        _check_corpus_path(p)

    start = time.perf_counter()
    backend = Tokenizer(models.BPE())
    # add_prefix_space=False keeps decode(encode(x)) == x; the GPT-2 style regex splits
    # runs of letters (a run of CJK characters is one chunk), digits, punctuation and spaces.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    n_texts = 0
    n_chars = 0

    def counted() -> Iterator[str]:
        nonlocal n_texts, n_chars
        for text in iter_corpus_text(paths):
            n_texts += 1
            n_chars += len(text)
            yield text

    backend.train_from_iterator(counted(), trainer=trainer)
    if n_texts == 0:
        raise ValueError(f"corpus is empty: no text found in {[str(p) for p in paths]}")

    kwargs: dict[str, Any] = {}
    if model_max_length is not None:
        kwargs["model_max_length"] = int(model_max_length)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=IM_END_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[EOS_DOC_TOKEN, IM_START_TOKEN],
        clean_up_tokenization_spaces=False,
        padding_side="right",
        **kwargs,
    )
    tokenizer.chat_template = CHATML_TEMPLATE

    # The trained special tokens must be single, stable ids 0..4.
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != expected_id:  # pragma: no cover - guards against library changes
            raise RuntimeError(f"special token {token!r} got id {got}, expected {expected_id}")

    logger.info(
        "trained byte-level BPE tokenizer: vocab %d (requested %d) on %d texts / %d chars from %d file(s) in %.1fs",
        len(tokenizer),
        vocab_size,
        n_texts,
        n_chars,
        len(paths),
        time.perf_counter() - start,
    )
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(output_dir))
    return tokenizer
