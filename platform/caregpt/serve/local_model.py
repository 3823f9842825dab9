"""The model deployment's code run inside the router replica: one Ray hop less per streamed message.

With ``colocate_router: true`` a single-model app is one deployment: the router replica builds the
model server object itself and calls it in-process. :class:`LocalHandle` offers the slice of a
Serve deployment handle the router uses (``options(...).generate.remote(payload)`` giving a stream
with ``__anext__`` and ``cancel``, ``ready.remote()``), so the router's code is the same either way.

Why: every streamed message otherwise travels model replica -> router -> HTTP proxy, two Ray
messages; at concurrency 1 that hop is most of the gap between time to first token over HTTP and
in-process (benchmarks/serve_load.py prints both). The cost: adapters (multiplexing) need the
separate model deployment, and a replica that dies takes its HTTP requests with it instead of the
router retrying them on another replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any


class _LocalStream:
    def __init__(self, gen: AsyncIterator[Any]):
        self._gen = gen

    def __aiter__(self):
        return self

    async def __anext__(self) -> Any:
        return await self._gen.__anext__()

    def cancel(self) -> None:
        # closing the generator runs its `finally`, which cancels the engine's work for this request
        asyncio.ensure_future(self._gen.aclose())


class _Method:
    def __init__(self, call):
        self.remote = call


class LocalHandle:
    """A stand-in for the model deployment's handle, over a model server object in this process."""

    def __init__(self, server: Any):
        self.server = server
        self.generate = _Method(lambda payload: _LocalStream(server.generate(payload)))
        self.ready = _Method(server.ready)

    def options(self, **_: Any) -> LocalHandle:
        # stream=True is how the object already behaves; multiplexed_model_id is always '' (no adapters here)
        return self

    def check_health(self) -> None:
        self.server.check_health()
