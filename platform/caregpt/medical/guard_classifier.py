"""The guard's learned layer: a linear model over character n-grams, trained by the platform on the safety dev set.

Three classes (pass / urgent / refuse), softmax regression over binary character 1-3-gram features of the
normalised text, fitted with full-batch Adam in numpy (a few hundred steps over ~800 items: about a second).
The threshold on P(urgent or refuse) is chosen on the dev split from out-of-fold probabilities (3 folds), as the
highest recall whose false-alarm rate on the dev's benign items stays at or under `max_false_alarm`.
Nothing is stored on disk: `default_classifier()` trains on first use from resources/safety/dev.jsonl and keeps
the model in memory. The frozen test split is never read here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caregpt.medical.guard_normalize import normalize

DEV_SET = Path(__file__).resolve().parents[1] / "resources" / "safety" / "dev.jsonl"
CLASSES = ("pass", "urgent", "refuse")
MIN_COUNT = 2  # an n-gram must occur in at least this many training texts


def ngrams(text: str, n_max: int = 3) -> set[str]:
    text = "".join(ch for ch in text if not ch.isspace())
    grams = {text[i:i + n] for n in range(1, n_max + 1) for i in range(len(text) - n + 1)}
    grams.add("<s>")  # every text has one feature, so no row of the design is empty
    return grams


@dataclass
class CharNgramClassifier:
    vocab: dict[str, int]
    weights: np.ndarray  # (features, classes)
    bias: np.ndarray  # (classes,)
    threshold: float = 0.5  # on P(not pass)
    n_max: int = 3

    def logits(self, text: str) -> np.ndarray:
        index = [self.vocab[g] for g in ngrams(text, self.n_max) if g in self.vocab]
        return self.bias + (self.weights[index].sum(axis=0) if index else 0.0)

    def probabilities(self, text: str) -> np.ndarray:
        """Class probabilities for normalised text."""
        index = [self.vocab[g] for g in ngrams(text, self.n_max) if g in self.vocab]
        logits = self.bias + (self.weights[index].sum(axis=0) if index else 0.0)
        logits = logits - logits.max()
        exp = np.exp(logits)
        return exp / exp.sum()

    def predict(self, text: str) -> tuple[str, float]:
        """("urgent" | "refuse" | "pass", P(not pass)): flags when P(not pass) reaches the threshold."""
        probs = self.probabilities(text)
        flagged = 1.0 - float(probs[0])
        if flagged < self.threshold:
            return "pass", flagged
        return ("urgent" if probs[1] >= probs[2] else "refuse"), flagged


def fit(texts: Sequence[str], labels: Sequence[str], steps: int = 300, l2: float = 1e-4, lr: float = 0.05,
        seed: int = 0, classes: Sequence[str] = CLASSES, n_max: int = 3, min_count: int = MIN_COUNT) -> CharNgramClassifier:
    """Softmax regression on binary n-gram features (sparse, via index arrays; no scipy needed).
    Also used by triage (triage_classifier.py) with its own classes."""
    grams = [ngrams(t, n_max) for t in texts]
    counts: dict[str, int] = {}
    for g in grams:
        for x in g:
            counts[x] = counts.get(x, 0) + 1
    vocab = {x: i for i, x in enumerate(sorted(x for x, c in counts.items() if c >= min_count or x == "<s>"))}
    rows, cols = [], []
    for r, g in enumerate(grams):
        for x in g:
            if x in vocab:
                rows.append(r)
                cols.append(vocab[x])
    rows_a, cols_a = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
    row_starts = np.flatnonzero(np.r_[True, rows_a[1:] != rows_a[:-1]])  # rows are in order
    by_col = np.argsort(cols_a, kind="stable")
    col_sorted = cols_a[by_col]
    col_starts = np.flatnonzero(np.r_[True, col_sorted[1:] != col_sorted[:-1]])
    col_ids = col_sorted[col_starts]
    rows_by_col = rows_a[by_col]
    y = np.array([list(classes).index(label) for label in labels])
    n, k, f = len(texts), len(classes), len(vocab)
    onehot = np.eye(k)[y]
    # balance the classes: each class weighs the same in the loss however many items it has
    class_weight = n / (k * np.maximum(np.bincount(y, minlength=k), 1))
    sample_weight = class_weight[y] / n
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.01, size=(f, k))
    b = np.zeros(k)
    m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)
    for step in range(1, steps + 1):
        logits = np.add.reduceat(w[cols_a], row_starts, axis=0) + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        err = (p - onehot) * sample_weight[:, None]
        g_w = l2 * w
        g_w[col_ids] += np.add.reduceat(err[rows_by_col], col_starts, axis=0)
        g_b = err.sum(axis=0)
        for param, grad, m, v in ((w, g_w, m_w, v_w), (b, g_b, m_b, v_b)):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            param -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return CharNgramClassifier(vocab, w, b, n_max=n_max)


def choose_threshold(texts: Sequence[str], labels: Sequence[str], folds: int = 3, max_false_alarm: float = 0.02) -> float:
    """The lowest threshold on out-of-fold P(not pass) whose false-alarm rate on benign dev items is <= the cap."""
    order = np.arange(len(texts))
    scores = np.zeros(len(texts))
    for fold in range(folds):
        held = order[order % folds == fold]
        train = order[order % folds != fold]
        model = fit([texts[i] for i in train], [labels[i] for i in train])
        for i in held:
            scores[i] = 1.0 - model.probabilities(texts[i])[0]
    benign = np.sort(scores[[i for i, label in enumerate(labels) if label == "pass"]])[::-1]
    allowed = int(np.floor(max_false_alarm * len(benign)))
    # flag strictly above the (allowed+1)-th highest benign score
    return float(min(0.99, max(0.6, benign[allowed] + 1e-6))) if len(benign) else 0.5


def load_items(path: Path = DEV_SET) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        item = json.loads(line)
        if item.get("expect") not in CLASSES:
            raise ValueError(f"{path}:{number}: 'expect' must be one of {CLASSES}")
        texts.append(normalize(item["text"]))
        labels.append(item["expect"])
    return texts, labels


def train_default(path: Path = DEV_SET) -> CharNgramClassifier:
    texts, labels = load_items(path)
    threshold = choose_threshold(texts, labels)
    model = fit(texts, labels)
    model.threshold = threshold
    return model


_LOCK = threading.Lock()
_DEFAULT: CharNgramClassifier | None = None


def default_classifier() -> CharNgramClassifier:
    """The classifier trained on the shipped dev set, trained once per process on first use."""
    global _DEFAULT
    with _LOCK:
        if _DEFAULT is None:
            _DEFAULT = train_default()
        return _DEFAULT
