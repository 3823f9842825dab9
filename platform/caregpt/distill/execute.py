"""Ray Data over the pending seeds: a small actor pool, each actor running requests on a few threads.

Why this shape: requests are I/O-bound, so one actor holds a thread pool of `concurrency / num_actors`
threads and a batch is twice that many seeds (a slow seed then idles one thread for a while, not the whole
batch); actors only cost a quarter CPU each. Input blocks are one batch each, so finished seeds stream back
to the driver block by block (the driver appends them to the resume log as they arrive: a killed run loses
at most the batches in flight). All actors share one TokenBucket actor, so `rate_limit` holds for the whole
run however many actors there are.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import numpy as np

from caregpt.config.loader import ConfigError
from caregpt.distill.config import DistillConfig
from caregpt.distill.seeds import SeedItem
from caregpt.distill.tasks import Generation, generate

logger = logging.getLogger(__name__)
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


class Secret:
    """Carries the API key to actors without it showing up in a repr, a log line or an error message."""

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"


def resolve_api_key(config: DistillConfig) -> Secret:
    """The key from the environment variable named by api_key_env; local endpoints need none."""
    value = os.environ.get(config.api_key_env, "")
    if value:
        return Secret(value)
    if (urlparse(config.base_url).hostname or "") in LOCAL_HOSTS:
        return Secret("EMPTY")  # vLLM / our Serve API accept any key when they have none configured
    raise ConfigError(
        f"the environment variable {config.api_key_env} (api_key_env) is not set: export the API key for "
        f"{config.base_url} in it, or set api_key_env to the variable that holds it"
    )


def make_client(config: DistillConfig, api_key: Secret, limiter=None):
    from caregpt.distill.client import TeacherClient

    # the HTTP library logs every request at INFO; with thousands of requests that drowns the progress lines
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)

    return TeacherClient(
        config.base_url, api_key.get(), config.model, timeout=config.timeout, max_retries=config.max_retries,
        backoff_base=config.backoff_base, backoff_max=config.backoff_max, max_retry_after=config.max_retry_after,
        limiter=limiter, log_text=config.log_text,
    )


class SeedWorker:
    """map_batches callable: a batch of seed rows -> one JSON-encoded Generation per row."""

    def __init__(self, config_json: str, api_key: Secret, bucket=None):
        from caregpt.distill.ratelimit import RayLimiter

        self.config = DistillConfig.model_validate_json(config_json)
        self.client = make_client(self.config, api_key, RayLimiter(bucket) if bucket is not None else None)
        self.pool = ThreadPoolExecutor(max_workers=self.config.threads_per_actor, thread_name_prefix="distill")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [
            SeedItem(str(i), str(s), int(v), int(n))
            for i, s, v, n in zip(batch["id"], batch["seed"], batch["variant"], batch["index"])
        ]
        results = list(self.pool.map(lambda item: generate(item, self.config, self.client), items))
        return {"payload": np.array([r.to_json() for r in results], dtype=object)}


def run_with_ray(config: DistillConfig, items: list[SeedItem], api_key: Secret, on_result: Callable[[Generation], None]) -> None:
    """Generate every item on Ray Data; on_result is called on the driver for each one as it finishes."""
    import ray

    from caregpt.distill.ratelimit import start_bucket_actor
    from caregpt.runtime import ensure_ray

    if not items:
        return
    ensure_ray(config.ray_address)
    bucket = start_bucket_actor(config.rate_limit) if config.rate_limit > 0 else None
    batch = 2 * config.threads_per_actor
    try:
        ds = ray.data.from_items([item.to_row() for item in items], override_num_blocks=max(1, math.ceil(len(items) / batch)))
        ds = ds.map_batches(
            SeedWorker,
            fn_constructor_kwargs=dict(config_json=config.model_dump_json(), api_key=api_key, bucket=bucket),
            batch_size=batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(config.num_actors, math.ceil(len(items) / batch))),
            num_cpus=config.actor_cpus,
        )
        # finished seeds are consumed as they arrive, in any order: the final output is re-ordered by seed index
        ds.context.execution_options.preserve_order = False
        for row in ds.iter_rows():
            on_result(Generation.from_json(row["payload"]))
    finally:
        if bucket is not None:
            ray.kill(bucket)


def run_in_process(config: DistillConfig, items: list[SeedItem], api_key: Secret, on_result: Callable[[Generation], None], limiter=None) -> None:
    """The same work without Ray, on `concurrency` threads (tests of the request logic, tiny runs)."""
    client = make_client(config, api_key, limiter)
    try:
        with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
            for generation in pool.map(lambda item: generate(item, config, client), items):
                on_result(generation)
    finally:
        client.close()
