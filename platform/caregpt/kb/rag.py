"""Put retrieved chunks into a chat request, and describe them as citations for the response.

The chunks go into the system message (appended to an existing one, since many chat templates accept a
single system message only, at the start) numbered [1], [2] ... with their source ids, and the model is
told to cite those numbers. The user's own messages are never rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence

from caregpt.kb.base import Hit

INSTRUCTION = (
    "以下是从知识库检索到的参考资料。回答时请优先依据这些资料，并在用到的句子后用编号标注出处，如 [1]、[2]；"
    "资料没有涉及的内容请明确说明，不要编造出处。\n"
    "Reference material retrieved from the knowledge base follows. Base your answer on it where relevant and "
    "cite the numbers of the passages you use, like [1], [2]; say so when the material does not cover the question."
)


def _block(number: int, hit: Hit) -> str:
    return f"[{number}] (source: {hit.doc_id}, chunk {hit.chunk_id})\n{hit.text.strip()}"


def _fitting(hits: Sequence[Hit], max_chars: int) -> int:
    """How many leading hits fit in `max_chars` (always at least one, so a long chunk is not lost)."""
    used = 0
    for number, hit in enumerate(hits, start=1):
        used += len(_block(number, hit))
        if number > 1 and used > max_chars:
            return number - 1
    return len(hits)


def format_context(hits: Sequence[Hit], max_chars: int = 6000) -> str:
    """The numbered reference block; passages past `max_chars` are left out."""
    return "\n\n".join(_block(n, h) for n, h in enumerate(hits[: _fitting(hits, max_chars)], start=1))


def build_rag_messages(
    messages: Sequence[dict], hits: Sequence[Hit], instruction: str = INSTRUCTION, max_chars: int = 6000
) -> list[dict]:
    """A new message list with the retrieved passages in the system prompt; unchanged when there are no hits."""
    out = [dict(m) for m in messages]
    if not hits:
        return out
    context = f"{instruction}\n\n{format_context(hits, max_chars)}"
    if out and out[0].get("role") == "system" and isinstance(out[0].get("content"), str):
        out[0]["content"] = f"{out[0]['content'].rstrip()}\n\n{context}"
    else:
        out.insert(0, {"role": "system", "content": context})
    return out


def citations_for(hits: Sequence[Hit], max_chars: int = 6000) -> list[dict]:
    """Citations matching the [n] numbers of `build_rag_messages` (same hits, same max_chars)."""
    shown = _fitting(hits, max_chars)
    return [
        {"index": n, "document": h.doc_id, "source": h.source, "chunk": h.chunk_id, "score": round(h.score, 6)}
        for n, h in enumerate(hits[:shown], start=1)
    ]
