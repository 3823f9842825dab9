"""Knowledge bases by name, for serving: a request names a knowledge base, never a path.

The deployment configures {name: directory}; a request's `knowledge_base` value is looked up as a key
only, so no request can make the server open a path of its choosing. Unknown names raise
`UnknownKnowledgeBase` (serving answers 404).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from pathlib import Path

from caregpt.kb.base import KnowledgeBase

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class UnknownKnowledgeBase(KeyError):
    """The requested knowledge-base name is not configured."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown knowledge base"


class KnowledgeBaseRegistry:
    """Opens each configured knowledge base once, on first use, and shares it across requests."""

    def __init__(self, directories: Mapping[str, str | Path]):
        for name in directories:
            if not _NAME.match(name):
                raise ValueError(f"knowledge base name {name!r}: use letters, digits, '_', '.', '-' (max 64)")
        self._directories = {name: Path(path) for name, path in directories.items()}
        self._open: dict[str, KnowledgeBase] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(self._directories)

    def get(self, name: str) -> KnowledgeBase:
        if not isinstance(name, str) or name not in self._directories:
            raise UnknownKnowledgeBase(f"knowledge base {name!r} does not exist (configured: {', '.join(self.names()) or 'none'})")
        with self._lock:
            if name not in self._open:
                self._open[name] = KnowledgeBase.open(self._directories[name])
            return self._open[name]

    def reload(self, name: str) -> KnowledgeBase:
        """Re-read a knowledge base after an ingest (serving can call this from an admin route)."""
        with self._lock:
            self._open.pop(name, None)
        return self.get(name)
