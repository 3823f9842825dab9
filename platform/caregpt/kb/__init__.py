"""Knowledge base: ingest documents, index them (BM25 over jieba tokens, optional dense vectors), retrieve, cite.

Serving uses four names::

    kb = KnowledgeBase.open(path)                  # read-only, loads the index into memory
    hits = kb.search(query, k)                     # list[Hit(doc_id, source, chunk_id, text, score)]
    messages = build_rag_messages(messages, hits)  # retrieved chunks go into the system prompt as [1], [2] ...
    citations = citations_for(hits)                # [{"index", "document", "source", "chunk", "score"}]

and `KnowledgeBaseRegistry` to map the knowledge-base *names* a request may carry onto configured directories.
"""

from caregpt.kb.base import Hit, KnowledgeBase, KnowledgeBaseError
from caregpt.kb.ingest import IngestReport
from caregpt.kb.rag import build_rag_messages, citations_for
from caregpt.kb.registry import KnowledgeBaseRegistry, UnknownKnowledgeBase

__all__ = [
    "Hit",
    "IngestReport",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "KnowledgeBaseRegistry",
    "UnknownKnowledgeBase",
    "build_rag_messages",
    "citations_for",
]
