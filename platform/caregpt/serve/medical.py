"""The medical layer of a chat request: safety guard first, then knowledge-base retrieval.

Runs in the router before the prompt is rendered:
- the guard (caregpt.medical.guard) reads the latest user message: an emergency puts urgent-care advice
  before the answer, a clearly harmful request is refused without calling the model, and an ordinary
  answer gets a short disclaimer once per conversation. Decisions are counted as Ray metrics (action and
  category only, never text).
- with a knowledge base (request field `knowledge_base`, or the model name suffixed `@NAME`), the
  KnowledgeRetriever deployment returns passages; they go into the system prompt numbered [1], [2]...,
  and the response carries `citations` (document, chunk, score) — in a streamed answer, on its last chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from caregpt.serve.errors import APIError


@dataclass
class MedicalContext:
    messages: list[dict[str, Any]]
    prefix: str = ""
    """Text before the model's answer (urgent-care advice); for a refusal, the whole answer."""
    suffix: str = ""
    """Text after the answer (the disclaimer)."""
    refuse: bool = False
    citations: list[dict[str, Any]] = field(default_factory=list)
    knowledge_base: str | None = None


def split_model_name(model: str | None) -> tuple[str | None, str | None]:
    """'tiny-medical@hospital' -> ('tiny-medical', 'hospital'); a name without '@' has no knowledge base."""
    if model and "@" in model:
        name, _, kb = model.rpartition("@")
        return (name or None), kb
    return model, None


class MedicalLayer:
    def __init__(self, config, retriever=None):
        from caregpt.medical.guard import GuardConfig, SafetyGuard

        self.config = config
        self.retriever = retriever
        self.guard = SafetyGuard(GuardConfig(enabled=config.safety_guard, emergency_number=config.emergency_number,
                                             crisis_line=config.crisis_line, disclaimer=config.disclaimer))
        self._decisions = None

    def _count(self, labels: dict[str, str]) -> None:
        try:
            if self._decisions is None:
                from ray.util.metrics import Counter

                self._decisions = Counter("caregpt_guard_decisions_total", "Safety guard decisions on chat requests",
                                          tag_keys=("action", "category"))
            self._decisions.inc(tags={"action": labels["action"], "category": labels["category"]})
        except Exception:  # noqa: BLE001 - metrics never fail a request
            pass

    async def apply(self, messages: list[dict[str, Any]], knowledge_base: str | None) -> MedicalContext:
        decision = self.guard.check(messages)
        self._count(decision.labels())
        if decision.action == "refuse":
            return MedicalContext(messages, prefix=decision.reply_prefix, refuse=True)
        context = MedicalContext(messages, prefix=(decision.reply_prefix + "\n\n") if decision.reply_prefix else "",
                                 suffix=("\n\n" + decision.disclaimer) if decision.disclaimer else "")
        if knowledge_base:
            await self._retrieve(context, knowledge_base)
        return context

    async def _retrieve(self, context: MedicalContext, name: str) -> None:
        from caregpt.kb.base import Hit
        from caregpt.kb.rag import build_rag_messages, citations_for

        configured = sorted(self.config.knowledge_bases)
        if name not in configured:
            raise APIError(404, f"The knowledge base '{name}' does not exist on this server. Available: "
                           f"{', '.join(configured) or 'none configured'}.", type="invalid_request_error",
                           param="knowledge_base", code="knowledge_base_not_found")
        users = [m for m in context.messages if m.get("role") == "user"]
        query = users[-1]["content"] if users else ""
        rows = await self.retriever.search.remote(name, query, self.config.rag_top_k)
        hits = [Hit(**row) for row in rows]
        context.messages = build_rag_messages(context.messages, hits)
        context.citations = citations_for(hits)
        context.knowledge_base = name
