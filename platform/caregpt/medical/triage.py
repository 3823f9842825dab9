"""Department triage (导诊): recommend catalog departments for a description of symptoms, with reasons.

Retrieval first: every department's guide is one document of an in-memory knowledge base (BM25 over
jieba tokens, plus dense vectors when an encoder is given), the query is the patient's own words, and
the departments come back best first. Lay words are first given their clinical terms (lay_terms.py). The reasons are the guide sentences that share the most
informative words with the query. When a served model is given (any OpenAI-compatible base_url),
it re-ranks the retrieved candidates and explains its choice (triage_model.py); if it fails or
answers outside the candidates, the retrieval ranking stands.

A learned classifier (triage_classifier.py, trained on department-labelled dialogues) is fused with retrieval:
each likely class (a department or a group of them) contributes its calibrated probability to the department of
that class that retrieval ranks highest, and every department adds RETRIEVAL_WEIGHT times its retrieval score
(scaled to 0-1). So the classifier says *which kind* of department, retrieval says *which one* of a group, and
retrieval alone still ranks when the classifier has no opinion. When the classifier's top probability is below
LOW_CONFIDENCE, the result says so and adds general practice (全科医学) after the k recommendations: "not sure ->
see a generalist (or the emergency department if it is urgent; the safety guard handles that)".

When no guide shares a word with the query, the recommendation is general practice (全科医学, when the
catalog has it): it sees undifferentiated complaints and refers on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from caregpt.kb.base import KnowledgeBase
from caregpt.kb.text import split_sentences, tokenize
from caregpt.medical.catalog import Catalog
from caregpt.medical.lay_terms import expand_query

FALLBACK = "全科医学"
RETRIEVAL_WEIGHT = 0.1  # chosen on dev records outside the shipped sample (0, .05, .1, .2, .3, .5, 1 tried; best top-3)
LOW_CONFIDENCE = 0.3  # calibrated top-class probability below which triage says it is not sure
GUIDE_CHUNK = 4000  # one chunk per guide: a department is scored on its whole guide (guides are ~300-550 chars)
CANDIDATES = 8  # retrieved departments offered to a model for re-ranking


@dataclass(frozen=True)
class Recommendation:
    department: str
    group: str
    score: float  # retrieval score (BM25, or RRF when hybrid); comparable within one result only
    reasons: tuple[str, ...]  # guide sentences that match the query, or the model's explanation


@dataclass
class TriageResult:
    recommendations: list[Recommendation]
    method: str  # "retrieval", "retrieval+classifier", "retrieval+model", or "fallback" (nothing matched)
    notes: list[str] = field(default_factory=list)  # e.g. why the model's answer was not used
    confidence: float | None = None  # calibrated probability of the classifier's top class, when it ran
    unsure: list[Recommendation] = field(default_factory=list)  # general practice, added when confidence is low

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "confidence": None if self.confidence is None else round(self.confidence, 4),
            "if_unsure": [r.department for r in self.unsure],
            "departments": [
                {"department": r.department, "group": r.group, "score": round(r.score, 4), "reasons": list(r.reasons)}
                for r in self.recommendations
            ],
            "notes": self.notes,
        }


class DepartmentTriage:
    """Built once per catalog (a fraction of a second); `recommend` is safe to call concurrently."""

    def __init__(self, catalog: Catalog, encoder=None, expand: bool = True, classifier="default",
                 retrieval_weight: float = RETRIEVAL_WEIGHT):
        """classifier: "default" (trained on the shipped sample on first use), a TriageClassifier, or None."""
        self.catalog = catalog
        self.retrieval_weight = retrieval_weight
        if classifier == "default":
            from caregpt.medical.triage_classifier import default_classifier

            classifier = default_classifier(catalog)
        self.classifier = classifier
        self.expand = expand  # add clinical terms for lay words (lay_terms.py) before retrieval
        documents = [(d.name, d.name, d.guide) for d in catalog.departments]
        self.kb = KnowledgeBase.from_texts(documents, chunk_size=GUIDE_CHUNK, overlap=0, encoder=encoder)
        self._sentences = {d.name: split_sentences(d.guide) for d in catalog.departments}
        df: Counter = Counter()
        for d in catalog.departments:
            df.update(set(tokenize(d.guide)))
        n = len(catalog.departments)
        self._idf = {token: math.log((n + 1) / (count + 0.5)) for token, count in df.items()}

    def rank(self, text: str, k: int) -> list[tuple[str, float]]:
        """(department, score) best first; several chunks of one guide count once, by their best chunk."""
        best: dict[str, float] = {}
        for hit in self.kb.search(text, k=len(self.kb)):
            best.setdefault(hit.doc_id, hit.score)
        return sorted(best.items(), key=lambda item: -item[1])[:k]

    def fused(self, text: str, query: str) -> tuple[list[tuple[str, float]], float]:
        """All departments ranked by classifier probability (via the best-retrieved department of each class) plus
        RETRIEVAL_WEIGHT x scaled retrieval score; and the calibrated top-class probability."""
        retrieved = dict(self.rank(query, len(self.catalog.departments)))
        top = max(retrieved.values(), default=0.0)
        scaled = {name: (score / top if top > 0 else 0.0) for name, score in retrieved.items()}
        order = {d.name: i for i, d in enumerate(self.catalog.departments)}
        scores = {name: self.retrieval_weight * value for name, value in scaled.items()}
        classes = self.classifier.ranked(text)
        for accepted, probability in classes:
            best = max(accepted, key=lambda name: (scaled.get(name, 0.0), -order.get(name, 0)))
            scores[best] = scores.get(best, 0.0) + probability
        ranked = sorted(scores.items(), key=lambda item: (-item[1], order.get(item[0], 0)))
        return ranked, (classes[0][1] if classes else 0.0)

    def reasons(self, department: str, text: str, limit: int = 2) -> tuple[str, ...]:
        """Up to `limit` guide sentences sharing the most informative words with the query, in guide order."""
        query = set(tokenize(text))
        scored = []
        for position, sentence in enumerate(self._sentences.get(department, [])):
            weight = sum(self._idf.get(t, 0.0) for t in query & set(tokenize(sentence)))
            if weight > 0:
                scored.append((weight, position, sentence))
        top = sorted(scored, key=lambda item: (-item[0], item[1]))[:limit]
        return tuple(sentence for _, _, sentence in sorted(top, key=lambda item: item[1]))

    def recommend(self, text: str, k: int = 3, model=None) -> TriageResult:
        """Top-k departments for `text`. `model`: a TriageModel (triage_model.py) to re-rank, or None."""
        if not text or not text.strip():
            raise ValueError("describe the symptoms: the text is empty")
        query = expand_query(text) if self.expand else text
        if self.classifier is not None:
            ranked, confidence = self.fused(text, query)
            method = "retrieval+classifier"
        else:
            ranked, confidence, method = self.rank(query, max(k, CANDIDATES)), None, "retrieval"
        if not ranked:
            return self._fallback(k)
        ranked = ranked[:max(k, CANDIDATES)]
        result = TriageResult([self._recommendation(name, score, query) for name, score in ranked[:k]], method,
                              confidence=confidence)
        if confidence is not None and confidence < LOW_CONFIDENCE and FALLBACK in self.catalog.names:
            result.notes.append(f"low confidence ({confidence:.2f}): if unsure, see general practice ({FALLBACK}); "
                                "if it is urgent, the emergency department")
            if FALLBACK not in {r.department for r in result.recommendations}:
                result.unsure.append(self._recommendation(FALLBACK, 0.0, query))
        if model is not None:
            candidates = [self._recommendation(name, score, query) for name, score in ranked]
            return model.rerank(text, candidates, self.catalog, k, result)
        return result

    def _recommendation(self, name: str, score: float, text: str) -> Recommendation:
        department = self.catalog.get(name)
        reasons = self.reasons(name, text) or tuple(self._sentences[name][:1])
        return Recommendation(name, department.group, float(score), reasons)

    def _fallback(self, k: int) -> TriageResult:
        note = "no department guide shares a word with the description"
        if FALLBACK in self.catalog.names:
            department = self.catalog.get(FALLBACK)
            reason = tuple(self._sentences[FALLBACK][:1])
            return TriageResult([Recommendation(FALLBACK, department.group, 0.0, reason)], "fallback", [note])
        return TriageResult([], "fallback", [note])


def user_text(messages: Sequence[dict]) -> str:
    """The patient's side of a conversation, for triage over a whole dialogue."""
    return "\n".join(m["content"] for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str))
