"""The learned half of triage: a department classifier over character n-grams, trained on labelled dialogues.

Classes are the catalog targets of the data's labels (department_map.py): 心血管科 and 心内科 are one class,
皮肤科 and 皮肤性病科 another, 外科 is the class "any surgical department". The model is the platform's own linear
softmax model (guard_classifier.fit) over character 1-2-grams of the patient's words, with balanced class
weights; probabilities are calibrated by a temperature fitted on a held-out fifth of the training data
(lowest negative log-likelihood on a grid). Training reads only the dev split of each file (`split_of`), so the
test split stays unseen. The shipped model is trained on first use from resources/triage/train.jsonl, a
trimmed dev-split sample of the MIT / Apache-2.0 dialogue sets (see tests/data/SOURCES.md); nothing binary is
stored.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caregpt.medical.catalog import Catalog
from caregpt.medical.department_map import resolve_targets
from caregpt.medical.guard_classifier import CharNgramClassifier, fit

SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "triage" / "train.jsonl"
MAX_CHARS = 300  # the opening of the patient's words carries the complaint; longer texts only add cost
TEMPERATURES = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def split_of(record: dict) -> str:
    """'test' for a stable third of the records, 'dev' for the rest. Keyed on the opening of the patient's words,
    so records that repeat a question (the Toyhom data has such near-duplicates) land in the same split."""
    key = "".join(patient_text(record).split())[:40] or str(record.get("id") or "")
    return "test" if int(hashlib.md5(key.encode("utf-8")).hexdigest(), 16) % 3 == 0 else "dev"


def patient_text(record: dict) -> str:
    """The patient's words of an alpaca-with-history record: earlier user turns, then instruction and input."""
    turns = [h[0] for h in record.get("history") or [] if isinstance(h, (list, tuple)) and h and isinstance(h[0], str)]
    turns += [record.get(key) for key in ("instruction", "input") if isinstance(record.get(key), str)]
    return "\n".join(t for t in turns if t.strip())


def target_key(accepted: set[str]) -> str:
    return "|".join(sorted(accepted))


@dataclass
class TriageClassifier:
    model: CharNgramClassifier
    classes: list[str]  # target keys
    targets: dict  # key -> frozenset of catalog departments
    temperature: float = 1.0

    def probabilities(self, text: str) -> np.ndarray:
        logits = self.model.logits(text[:MAX_CHARS]) / self.temperature
        logits = logits - logits.max()
        exp = np.exp(logits)
        return exp / exp.sum()

    def ranked(self, text: str) -> list[tuple[frozenset, float]]:
        """(accepted departments, calibrated probability) per class, most likely first."""
        probs = self.probabilities(text)
        return [(self.targets[self.classes[i]], float(probs[i])) for i in np.argsort(-probs)]


def labelled_examples(records: Iterable[dict], catalog: Catalog, split: str | None = "dev") -> tuple[list[str], list[str], dict]:
    texts, keys, targets = [], [], {}
    for record in records:
        if split and split_of(record) != split:
            continue
        accepted = resolve_targets(str(record.get("department") or "").strip(), catalog)
        text = patient_text(record)
        if not accepted or not text:
            continue
        key = target_key(accepted)
        targets[key] = frozenset(accepted)
        texts.append(text[:MAX_CHARS])
        keys.append(key)
    return texts, keys, targets


def train(texts: Sequence[str], keys: Sequence[str], targets: dict, steps: int = 150) -> TriageClassifier:
    classes = sorted(set(keys))
    order = np.arange(len(texts))
    held = order % 5 == 0
    model = fit([t for t, h in zip(texts, held) if not h], [k for k, h in zip(keys, held) if not h], steps=steps,
                classes=classes, n_max=2, min_count=3)
    # temperature: lowest negative log-likelihood on the held-out fifth
    logits = np.array([model.logits(t) for t, h in zip(texts, held) if h])
    gold = np.array([classes.index(k) for k, h in zip(keys, held) if h])
    best, best_nll = 1.0, float("inf")
    for temperature in TEMPERATURES:
        z = logits / temperature
        z = z - z.max(axis=1, keepdims=True)
        nll = float(-(z[np.arange(len(gold)), gold] - np.log(np.exp(z).sum(axis=1))).mean())
        if nll < best_nll:
            best, best_nll = temperature, nll
    model = fit(texts, keys, steps=steps, classes=classes, n_max=2, min_count=3)  # all of the training data
    return TriageClassifier(model, classes, targets, best)


def read_jsonl(paths: Iterable[str | Path]) -> list[dict]:
    records = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: training file not found (JSONL records with a 'department' field)")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(f"{path}:{number}: invalid JSON (expected one JSON record per line)") from None
    return records


def train_from_files(paths: Iterable[str | Path], catalog: Catalog, split: str | None = "dev") -> TriageClassifier:
    texts, keys, targets = labelled_examples(read_jsonl(paths), catalog, split)
    if len(set(keys)) < 2:
        raise ValueError("triage training needs records of at least two mapped departments")
    return train(texts, keys, targets)


_LOCK = threading.Lock()
_DEFAULT: dict[int, TriageClassifier] = {}


def default_classifier(catalog: Catalog) -> TriageClassifier | None:
    """The classifier trained on the shipped sample (once per catalog per process), or None without the sample."""
    if not SAMPLE.is_file():
        return None
    with _LOCK:
        if id(catalog) not in _DEFAULT:
            _DEFAULT[id(catalog)] = train_from_files([SAMPLE], catalog, split=None)  # the sample is dev-split only
        return _DEFAULT[id(catalog)]
