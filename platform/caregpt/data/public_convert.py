"""Converters: a public dataset's downloaded files -> the platform's formats, plus its dataset_info.json entry.

Outputs (one jsonl per dataset): alpaca with history for SFT (instruction / input / output / history, extra
fields such as department kept), alpaca with ``output: [chosen, rejected]`` for preference pairs, ``{"text"}``
for pretraining text, the exam jsonl `caregpt eval --task choice` reads (question / options / answer /
subject), and ``{"id", "instruction", ...}`` prompts. Every record is checked the way training or evaluation
will read it (caregpt.data.formats.normalize, caregpt.eval.choice_data); a record that cannot be converted or
fails that check is counted, its source location and reason kept for the report, and left out.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caregpt.data.formats import STAGE_KINDS, normalize
from caregpt.data.registry import ALPACA_COLUMNS, _entry_to_attr

Raw = tuple[str, Any]  # (source location "file:line", raw record)
OPTION_LINE = re.compile(r"^\s*([A-Z])\s*[.、:：．)]?\s*(.+?)\s*$")


@dataclass
class Converted:
    path: Path
    kind: str
    written: int = 0
    invalid: int = 0
    examples: list[str] = field(default_factory=list)  # first invalid records: "file:line: reason"
    entry: dict[str, Any] | None = None  # the dataset_info.json entry (None: not training data)


def _read_json_records(path: Path) -> Iterator[Raw]:
    """A JSON array (loaded whole: arrays cannot be streamed) or JSON lines (streamed), whichever the file holds."""
    with open(path, encoding="utf-8-sig") as handle:
        head = handle.read(4096).lstrip()
        handle.seek(0)
        if head.startswith("\ufeff"):
            head = head[1:]
        if head.startswith("["):
            for index, record in enumerate(json.load(handle), start=1):
                yield f"{path.name}[{index}]", record
            return
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield f"{path.name}:{line_no}", json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"{path.name}:{line_no}", ValueError(f"not valid JSON ({exc.msg})")


def _text_encoding(path: Path) -> str:
    """UTF-8 if the whole file decodes as UTF-8, else GB18030 (Toyhom's files); read in 1 MB pieces."""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            with open(path, encoding=encoding) as handle:
                while handle.read(1 << 20):
                    pass
            return encoding
        except UnicodeDecodeError:
            continue
    raise ValueError(f"{path}: neither UTF-8 nor GB18030 text")


def _read_csv(path: Path) -> Iterator[Raw]:
    """CSV rows as dicts, streamed; the location is the row's first line in the file."""
    with open(path, encoding=_text_encoding(path), newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:  # reads the header line
            return
        line_no = reader.line_num + 1
        for row in reader:
            yield f"{path.name}:{line_no}", row
            line_no = reader.line_num + 1


def _need(record: Any, *keys: str) -> list[Any]:
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, got {type(record).__name__}")
    missing = [k for k in keys if not isinstance(record.get(k), str) or not record[k].strip()]
    if missing:
        raise ValueError(f"missing or empty field(s) {missing}")
    return [record[k].strip() for k in keys]


# ------------------------------------------------------------------------------------------ record mappers
def toyhom(record: Any) -> dict[str, Any]:
    department, title, ask, answer = _need(record, "department", "title", "ask", "answer")
    return {"instruction": title, "input": ask if ask != title else "", "output": answer, "history": [], "department": department}


def cmtmedqa(record: Any) -> dict[str, Any]:
    instruction, output = _need(record, "instruction", "output")
    out = {"instruction": instruction, "input": record.get("input") or "", "output": output, "history": record.get("history") or []}
    for source, target in (("id", "id"), ("cate1", "department"), ("cate2", "sub_department")):
        if record.get(source) not in (None, ""):
            out[target] = record[source]
    return out


def alpaca(record: Any) -> dict[str, Any]:
    instruction, output = _need(record, "instruction", "output")
    return {**record, "instruction": instruction, "output": output, "input": record.get("input") or ""}


def text(record: Any) -> dict[str, Any]:
    (value,) = _need(record, "text")
    return {"text": value}


def medicalgpt_reward(record: Any) -> dict[str, Any]:
    question, chosen, rejected = _need(record, "question", "response_chosen", "response_rejected")
    return {"instruction": question, "input": "", "output": [chosen, rejected]}


def query_response(record: Any) -> dict[str, Any]:
    query, response = _need(record, "query", "response")
    return {"instruction": query, "input": "", "output": response, "history": []}


def huatuo_med_dialog(record: Any) -> dict[str, Any]:
    case, diagnosis = _need(record, "medical_case", "doctor_diagnosis")
    return {"id": record.get("id"), "instruction": case, "input": "", "output": diagnosis, "history": [],
            "department": record.get("Department") or ""}


def huatuo_kuake_qic(record: Any) -> dict[str, Any]:
    (query,) = _need(record, "query")
    return {"id": record.get("id"), "instruction": query, "intent": record.get("label") or ""}


def huatuo_sft_v1(record: Any) -> dict[str, Any]:
    """{"data": ["问：...", "答：...", ...]} -> alpaca with history (the prefixes are dropped)."""
    turns = record.get("data") if isinstance(record, dict) else None
    if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2 or not all(isinstance(t, str) for t in turns):
        raise ValueError("field 'data' must be an even-length list of alternating question / answer strings")
    clean = [re.sub(r"^\s*(问|答)[：:]\s*", "", t).strip() for t in turns]
    pairs = [[clean[i], clean[i + 1]] for i in range(0, len(clean), 2)]
    return {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1], "history": pairs[:-1]}


def cmb_clin(record: Any) -> dict[str, Any]:
    """One clinical case -> one multi-turn record: the case description opens the first question."""
    (description,) = _need(record, "description")
    pairs = record.get("QA_pairs")
    if not isinstance(pairs, list) or not pairs:
        raise ValueError("field 'QA_pairs' must be a non-empty list of {question, solution}")
    turns = [_need(p, "question", "solution") for p in pairs]
    turns[0][0] = f"{description}\n{turns[0][0]}"
    return {"id": record.get("id"), "instruction": turns[-1][0], "input": "", "output": turns[-1][1],
            "history": [list(t) for t in turns[:-1]], "title": record.get("title") or ""}


def cmb_exam(record: Any) -> dict[str, Any]:
    question, answer = _need(record, "question", "answer")
    options = record.get("option")
    if not isinstance(options, dict):
        raise ValueError("field 'option' must be an object of lettered options")
    options = {k: v for k, v in options.items() if isinstance(v, str) and v.strip()}  # CMB pads with empty E/F
    return {"question": question, "options": options, "answer": answer,
            "subject": record.get("exam_subject") or record.get("exam_class") or "all",
            "question_type": record.get("question_type") or ""}


def cmexam(record: Any) -> dict[str, Any]:
    question, options_text, answer = _need(record, "Question", "Options", "Answer")
    options = {}
    for line in options_text.splitlines():
        match = OPTION_LINE.match(line)
        if match:
            options[match.group(1)] = match.group(2)
    if len(options) < 2:
        raise ValueError(f"field 'Options' holds no lettered options ('A text' lines): {options_text[:60]!r}")
    subject = next((record[k] for k in ("Medical Discipline", "Clinical Department") if (record.get(k) or "").strip()), "all")
    return {"question": question, "options": options, "answer": answer, "subject": subject}


# ------------------------------------------------------------------------------------------ checks and writing
def _platform_check(kind: str, name: str, dataset_dir: Path, entry: dict[str, Any] | None) -> Callable[[str, dict], str]:
    """The check training / evaluation applies; returns '' for a good record, else the reason."""
    if kind == "choice":
        from caregpt.eval.choice_data import validate_record

        return lambda loc, record: "; ".join(p.removeprefix(f"{loc}: ") for p in validate_record(record, loc)[1])
    if entry is None:
        return lambda loc, record: ""
    attr = _entry_to_attr(name, entry, dataset_dir, dataset_dir / "dataset_info.json")
    stage = {"sft": "sft", "pref": "rm", "text": "pt"}[kind]
    return lambda loc, record: normalize(record, loc, attr, STAGE_KINDS[stage]).error


ENTRY_COLUMNS = {
    "sft": {"columns": dict(ALPACA_COLUMNS)},
    "pref": {"ranking": True, "columns": dict(ALPACA_COLUMNS)},
    "text": {"columns": {"prompt": "text"}},
}


def _write(records: Iterable[Raw], mapper: Callable[[Any], dict], kind: str, name: str, out_dir: Path, max_examples: int) -> Converted:
    out = out_dir / f"{name}.jsonl"
    entry = {"file_name": out.name, **json.loads(json.dumps(ENTRY_COLUMNS[kind]))} if kind in ENTRY_COLUMNS else None
    check = _platform_check(kind, name, out_dir, entry)
    result = Converted(out, kind, entry=entry)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for loc, raw in records:
            try:
                if isinstance(raw, Exception):
                    raise raw
                record = mapper(raw)
                problem = check(loc, record)
            except ValueError as exc:
                problem = str(exc)
            if problem:
                result.invalid += 1
                if len(result.examples) < max_examples:
                    result.examples.append(f"{loc}: {problem}")
                continue
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            result.written += 1
    tmp.replace(out)
    return result


CONVERTERS: dict[str, tuple[Callable[[Path], Iterator[Raw]], Callable[[Any], dict]]] = {
    "toyhom_csv": (_read_csv, toyhom),
    "cmtmedqa_json": (_read_json_records, cmtmedqa),
    "cmexam_csv": (_read_csv, cmexam),
    "cmb_exam_json": (_read_json_records, cmb_exam),
    "cmb_clin_json": (_read_json_records, cmb_clin),
    "jsonl_text": (_read_json_records, text),
    "jsonl_alpaca": (_read_json_records, alpaca),
    "medicalgpt_reward": (_read_json_records, medicalgpt_reward),
    "query_response": (_read_json_records, query_response),
    "huatuo_med_dialog": (_read_json_records, huatuo_med_dialog),
    "huatuo_kuake_qic": (_read_json_records, huatuo_kuake_qic),
    "huatuo_sft_v1": (_read_json_records, huatuo_sft_v1),
}


def convert(name: str, converter: str, kind: str, files: list[Path], out_dir: Path, max_examples: int = 5) -> Converted:
    """Convert the downloaded ``files`` of dataset ``name`` into ``out_dir``."""
    if converter == "copy":  # material for other tools (a knowledge base): kept as published
        target = out_dir / f"{name}{files[0].suffix}"
        shutil.copyfile(files[0], target)
        return Converted(target, kind, written=1)
    if converter not in CONVERTERS:
        raise ValueError(f"dataset {name!r}: unknown converter {converter!r}; known: {sorted(CONVERTERS) + ['copy']}")
    reader, mapper = CONVERTERS[converter]
    return _write((raw for path in files for raw in reader(path)), mapper, kind, name, out_dir, max_examples)
