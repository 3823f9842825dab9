"""Retrieval as its own Serve deployment, so it scales apart from the model replicas.

The deployment owns the knowledge-base indexes (BM25 + optional vectors, opened once per replica).
Names come from requests; directories only from the deployment's config: a request can pick one of the
configured knowledge bases, never a path.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

logger = logging.getLogger("ray.serve").getChild("caregpt.knowledge")


@serve.deployment(name="KnowledgeRetriever", max_ongoing_requests=64)
class KnowledgeRetriever:
    def __init__(self, directories: dict[str, str]):
        from caregpt.kb.registry import KnowledgeBaseRegistry

        self.registry = KnowledgeBaseRegistry(directories)
        for name in self.registry.names():  # open now: a broken index fails the deployment, not a user's request
            kb = self.registry.get(name)
            logger.info("knowledge base %s: %d chunks", name, len(kb))

    def names(self) -> list[str]:
        return self.registry.names()

    def search(self, name: str, query: str, k: int) -> list[dict[str, Any]]:
        """Hits as plain dicts (they cross a process boundary); raises KeyError for an unknown name."""
        from dataclasses import asdict

        from caregpt.kb.registry import UnknownKnowledgeBase

        try:
            kb = self.registry.get(name)
        except UnknownKnowledgeBase as exc:
            raise KeyError(str(exc)) from None
        return [asdict(hit) for hit in kb.search(query, k=k)]
