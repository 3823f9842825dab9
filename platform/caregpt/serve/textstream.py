"""From generated token ids to streamed text: incremental decoding and stop strings.

Decoding token by token breaks on byte-level BPE: a Chinese character is often split over two
tokens, and decoding the first alone gives U+FFFD. SentencePiece vocabularies drop the leading
space of a word decoded on its own. :class:`IncrementalText` decodes a short window that starts a
few tokens back and emits only text that is complete (the window trick of vLLM's detokenizer).

Stop strings may also arrive split over tokens, so text that could be the beginning of a stop
string is held back until it is clearly not one; the answer ends right before the stop string,
which is never sent.
"""

from __future__ import annotations

from typing import Any

_REPLACEMENT = "\ufffd"


class IncrementalText:
    """Feed token ids as they come; get the new text to send and whether a stop string ended it."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...] | list[str] = ()):
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start: the tokens emitted last, kept as decoding context
        self._read = 0  # tokens whose text has been emitted (into `_pending` or out)
        self.stops = tuple(s for s in stops if s)
        self._pending = ""  # decoded text held back because it may start a stop string
        self.stopped = False
        self.text = ""  # everything emitted so far

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def feed(self, new_ids: list[int]) -> str:
        """The text to send for these new tokens ('' while a character or a possible stop is incomplete)."""
        if self.stopped or not new_ids:
            return ""
        self._ids.extend(new_ids)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return ""  # nothing new yet, or a multi-byte character is still incomplete
        piece = after[len(before) :]
        # the tokens just emitted become the context window of the next decode (spacing, merges)
        self._prefix, self._read = self._read, len(self._ids)
        return self._emit(piece)

    def _emit(self, piece: str) -> str:
        self._pending += piece
        if not self.stops:
            out, self._pending = self._pending, ""
            self.text += out
            return out
        cut = min((at for at in (self._pending.find(s) for s in self.stops) if at >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            self.text += out
            return out
        # hold back the longest tail that is a proper prefix of some stop string
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(self._pending) + 1)) if self._pending.endswith(s[:k])), default=0)
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(out) :]
        self.text += out
        return out

    def flush(self) -> str:
        """At the end of generation: release held-back text (it turned out not to be a stop string)."""
        if self.stopped:
            return ""
        tail = ""
        if self._read < len(self._ids):  # an incomplete character at the very end: send what decodes
            before = self._decode(self._ids[self._prefix : self._read])
            after = self._decode(self._ids[self._prefix :]).rstrip(_REPLACEMENT)
            tail = after[len(before) :] if len(after) > len(before) else ""
            self._read = len(self._ids)
        out, self._pending = self._pending + tail, ""
        self.text += out
        return out
