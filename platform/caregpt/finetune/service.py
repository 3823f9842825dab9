"""The fine-tuning service of one router replica: state, storage, the job runner and its monitor thread.

The monitor is a daemon thread (its Ray and SQLite calls block, and must not stall the event loop that
streams chat answers). With several router replicas a SQLite lease lets one of them run it at a time.
"""

from __future__ import annotations

import logging
import secrets
import threading
from pathlib import Path
from typing import Any

from caregpt.finetune.runner import JobRunner, Serving
from caregpt.finetune.settings import FinetuneSettings
from caregpt.finetune.state import State
from caregpt.finetune.storage import Storage

logger = logging.getLogger("ray.serve").getChild("caregpt.finetune")


def serving_of(router: Any) -> Serving:
    config = router.config
    template = config.template or router.catalog.base_template or ("auto" if getattr(router.tokenizer, "chat_template", None) else "default")
    return Serving(base_name=router.catalog.base_name, model_path=config.model_name_or_path, checkpoint_dir=config.checkpoint_dir,
                   template=template, adapters_dir=Path(config.adapters_dir).expanduser().resolve())


class FinetuneService:
    def __init__(self, settings: FinetuneSettings, serving: Serving):
        self.settings = settings
        self.serving = serving
        self.storage = Storage(settings.storage_root)
        self.state = State(settings.state_path)
        self.runner = JobRunner(settings, self.state, self.storage, serving)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._holder = secrets.token_hex(8)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._monitor, name="caregpt-finetune-monitor", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """A job was created or cancelled: look at it now rather than at the next poll."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    def _monitor(self) -> None:
        interval = self.settings.poll_interval_s
        while not self._stop.is_set():
            try:
                if self.state.take_lease(self._holder, ttl_s=max(30.0, 10 * interval)):
                    self.runner.tick()
            except Exception:  # noqa: BLE001 - the monitor must outlive any one failure
                logger.exception("fine-tuning monitor pass failed")
            self._wake.wait(interval)
            self._wake.clear()
