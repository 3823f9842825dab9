"""Which models a request may name, where their files are, and which chat template each uses.

The `model` of a request is the base model's served name or the name of an adapter: a direct
subfolder of the configured ``adapters_dir`` that holds ``adapter_config.json``. A name from a
request is never used as a path until it has passed :meth:`Catalog.adapter_path`: a plain name
(letters, digits, ``._-:``), no ``..``, no separators, and a real directory whose resolved path
sits directly inside the resolved adapter root (a symlink pointing elsewhere is refused too).
An adapter published by a fine-tuning job belongs to the API key that ran the job: other keys neither
see it listed nor resolve it (finetune/tenancy.py).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from caregpt.finetune.tenancy import visible
from caregpt.models.inference import ADAPTER_CONFIG_NAME, recorded_template  # noqa: F401 - recorded_template: the one reader, used by server.py too
from caregpt.serve.config import ServeConfig
from caregpt.serve.errors import APIError, bad_request, model_not_found

logger = logging.getLogger("caregpt.serve.catalog")

# ':' for fine-tuned models (ft:<base>:<suffix>:<job-id>, OpenAI's naming)
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,159}$")
MAX_LISTED_ADAPTERS = 1000


@dataclass(frozen=True)
class ModelRef:
    """A resolved `model`: the name answered back, the multiplexed model id ('' = base), its template."""

    name: str
    adapter: str  # '' for the base model
    template: str | None  # recorded template name, None when nothing is recorded


class Catalog:
    def __init__(self, config: ServeConfig):
        self.config = config
        self.base_name = config.model_name
        self.root = Path(config.adapters_dir).expanduser().resolve() if config.adapters_dir else None
        # the base's template: explicit setting > last merged adapter's record > model dir's record
        recorded = recorded_template(*reversed(config.checkpoint_dir or []), config.model_name_or_path)
        if config.template and recorded and config.template != recorded:
            logger.warning("template %r was set, but the checkpoint was trained with %r; using %r", config.template, recorded, config.template)
        self.base_template = config.template or recorded

    def adapter_path(self, name: str) -> Path:
        """The directory of adapter `name`, or an APIError; the only way a request's name becomes a path."""
        if self.root is None:
            raise model_not_found(name, self.names())
        if not ADAPTER_NAME.match(name) or ".." in name:
            raise bad_request(
                f"Invalid model name {name[:80]!r}: adapter names are plain folder names (letters, digits, '.', '_', '-', ':').",
                "model",
                "invalid_model_name",
            )
        candidate = (self.root / name).resolve()
        if candidate.parent != self.root or not (candidate / ADAPTER_CONFIG_NAME).is_file():
            raise model_not_found(name, self.names())
        return candidate

    def adapters(self) -> list[str]:
        """Adapter names present now (the folder is read on every call, so new adapters appear without a restart)."""
        if self.root is None or not self.root.is_dir():
            return []
        names = []
        for child in sorted(self.root.iterdir()):
            if len(names) >= MAX_LISTED_ADAPTERS:
                break
            if ADAPTER_NAME.match(child.name) and child.resolve().parent == self.root and (child / ADAPTER_CONFIG_NAME).is_file() and visible(child):
                names.append(child.name)
        return names

    def names(self) -> list[str]:
        return [self.base_name, *self.adapters()]

    def resolve(self, name: str | None) -> ModelRef:
        """The model a request asked for (None = the base model)."""
        if name is None or name == self.base_name:
            return ModelRef(self.base_name, "", self.base_template)
        if not isinstance(name, str) or not name.strip():
            raise bad_request("model must be a non-empty string.", "model")
        try:
            path = self.adapter_path(name)
            if not visible(path):  # another API key's fine-tuned model: as if it did not exist
                raise model_not_found(name, self.names())
        except APIError as exc:
            if self.config.accept_any_model and exc.status == 404:
                return ModelRef(name, "", self.base_template)  # api_demo compatibility: any name is the base
            raise
        return ModelRef(name, name, self.config.template or recorded_template(path) or self.base_template)
