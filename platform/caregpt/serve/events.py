"""What a model replica streams to the router: typed token events, sent in batches.

One :class:`TokenEvent` says, for one choice of one prompt, the text produced since the last
event, how many tokens the answer has so far and, on its last event, why it ended. A replica sends
a list of them per message (every event that piled up since its last message), so the number of
Ray messages per answer does not grow with the number of tokens when the replica is busy.
Engine failures are not events: the replica raises, and the router turns that into an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class TokenEvent:
    choice: int
    """Which of the request's n answers this is."""
    text: str
    """Text produced since this choice's previous event ('' is allowed on the final event)."""
    tokens: int
    """Tokens in this choice's answer so far (usage is counted from this, never from the text)."""
    finish: FinishReason | None = None
    """Set on the choice's last event."""


def merge(batch: list[TokenEvent]) -> dict[int, tuple[str, FinishReason | None]]:
    """Events of one batch folded per choice, in choice order: (all new text, finish reason)."""
    out: dict[int, tuple[str, FinishReason | None]] = {}
    for ev in batch:
        text, finish = out.get(ev.choice, ("", None))
        out[ev.choice] = (text + ev.text, ev.finish or finish)
    return dict(sorted(out.items()))
