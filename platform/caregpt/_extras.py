"""Optional features live in pip extras; a missing one is reported as one line saying what to install.

The core install (train, tokenize, evaluate, export, serve) never imports these packages at module level:
each feature calls :func:`require` where it first needs its package, so `caregpt train` works without
Gradio and `caregpt webui` without it says `pip install "caregpt[webui]"` instead of a traceback.
The CLI prints a :class:`MissingExtra` as one line (caregpt/cli.py); library callers can catch it as the
ImportError it is.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# extra -> the distributions it adds (kept in step with [project.optional-dependencies] in pyproject.toml,
# which tests/unit/test_extras.py checks)
EXTRAS = {
    "webui": ("gradio",),
    "kb": ("bm25s", "pypdf", "python-docx"),
    "tune": ("optuna",),
    "vllm": ("vllm",),
    "bench": ("trl", "psutil", "httpx"),
}


class MissingExtra(ImportError):
    """A package of an optional extra is not installed."""

    def __init__(self, purpose: str, package: str, extra: str):
        self.purpose, self.package, self.extra = purpose, package, extra
        super().__init__(
            f"{purpose} needs {package}, which is not installed: pip install \"caregpt[{extra}]\""
            f"  (in a clone: pip install -e \".[{extra}]\")",
            name=package,
        )


def require(module: str, *, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import `module`, or raise MissingExtra naming the extra that installs it.

    Only a missing `module` itself becomes MissingExtra; an installed package that fails inside its own
    imports is a broken install and keeps its real error.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.split(".")[0] == exc.name.split(".")[0]:
            raise MissingExtra(purpose, package or module.split(".")[0], extra) from None
        raise


def has(module: str) -> bool:
    """Whether `module` can be imported (for optional behaviour that is skipped rather than refused)."""
    return importlib.util.find_spec(module.split(".")[0]) is not None
