"""The HTTP ingress deployment: authenticate, validate, render the prompt, call a model replica.

Everything cheap and client-facing happens here, in replicas that hold no model: API keys,
OpenAI validation, the chat template and tokenizer (so the context-length check happens before a
model replica is involved), OpenAI response shapes and SSE. The model deployment is called through
a handle with the adapter as ``multiplexed_model_id``.

Failures of the model deployment become OpenAI errors a client can act on: a full queue
(``max_queued_requests``) is a 503 with Retry-After; a model replica that dies before any byte
reached the client is retried on another replica (non-streamed requests are retried even if the
replica dies mid-answer, since nothing was sent yet); a request that runs past
``request_timeout_s`` is cancelled in the engine and answered with 504.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray import serve

from caregpt.serve import errors
from caregpt.serve.catalog import Catalog, ModelRef
from caregpt.serve.config import ServeConfig
from caregpt.serve.errors import APIError
from caregpt.serve.events import TokenEvent
from caregpt.serve.limits import Admission, FairShare, check_counts, check_text_size, max_token_bytes
from caregpt.serve.protocol import ChatCompletionRequest, CompletionRequest, normalize_messages
from caregpt.serve.sampling import SamplingParams

logger = logging.getLogger("ray.serve").getChild("caregpt.router")

_RETRIES_ON_REPLICA_DEATH = 3
_LARGE_TEXT_CHARS = 20_000  # tokenize longer prompts off the event loop


@dataclass
class Job:
    """One prompt to generate for: what the model replica needs, plus what the response needs."""

    ref: ModelRef
    prompt_ids: list[int]
    params: SamplingParams
    n: int
    request_id: str
    deadline: float
    prefix: str = ""
    """Text sent before the model's answer (the safety guard's urgent-care advice)."""
    suffix: str = ""
    """Text sent after it (the disclaimer)."""
    canned: bool = False
    """The answer is `prefix` alone and the model is not called (a refused request)."""
    citations: list[dict[str, Any]] | None = None

    def payload(self) -> dict[str, Any]:
        p = self.params
        params = {"max_tokens": p.max_tokens, "temperature": p.temperature, "top_p": p.top_p, "seed": p.seed, "stop": list(p.stop), "ignore_eos": p.ignore_eos}
        return {"request_id": self.request_id, "prompt_ids": self.prompt_ids, "params": params, "n": self.n, "adapter": self.ref.adapter or ""}

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.001)


class ReplicaDied(Exception):
    """The model replica serving a request stopped mid-answer (the router may run the request again)."""


def _replica_death_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return (ActorDiedError, ActorUnavailableError, RayActorError)


@serve.deployment(name="OpenAIRouter", max_ongoing_requests=1000)
@serve.ingress()
class OpenAIRouter:
    def __init__(self, llm: Any, config: dict[str, Any], retriever: Any = None):
        from transformers import AutoConfig

        from caregpt.serve.loading import load_tokenizer
        from caregpt.serve.observability import RouterMetrics

        self.config = ServeConfig(**config)
        if llm is None:  # colocate_router: the model lives in this replica (caregpt.serve.local_model)
            from caregpt.serve.local_model import LocalHandle
            from caregpt.serve.server import LLMServer

            llm = LocalHandle(LLMServer.func_or_class(config))
        self.llm = llm
        self.catalog = Catalog(self.config)
        from caregpt.serve.medical import MedicalLayer

        self.medical = MedicalLayer(self.config, retriever)
        self._triage = None
        self.tokenizer = load_tokenizer(self.config)
        self.api_keys = self.config.accepted_keys()
        if not self.api_keys:
            logger.warning("no API keys configured (api_keys / api_keys_file / CAREGPT_API_KEYS): the API is open to anyone who can reach it")
        hf_config = AutoConfig.from_pretrained(self.config.model_name_or_path, trust_remote_code=self.config.trust_remote_code)
        positions = getattr(hf_config.get_text_config(), "max_position_embeddings", None) or 2048
        self.max_model_len = min(self.config.max_model_len or positions, positions)
        self.metrics = RouterMetrics()
        self.token_bytes = max_token_bytes(self.tokenizer)
        self.admission = Admission(self.config.max_pending_requests)
        self.created = int(time.time())
        self._templates: dict[str | None, Any] = {}

    def __serve_build_asgi_app__(self):
        from caregpt.serve.api import build_api

        return build_api(self)

    # ---- request preparation -------------------------------------------------------------------
    def template(self, name: str | None):
        if name not in self._templates:
            from caregpt.data.templates import get_template

            chosen = name or ("auto" if getattr(self.tokenizer, "chat_template", None) else "default")
            self._templates[name] = get_template(chosen, self.tokenizer)
        return self._templates[name]

    def sampling(self, body: ChatCompletionRequest | CompletionRequest, prompt_tokens: int, param_stops: tuple[str, ...] = ()) -> SamplingParams:
        limit = self.max_model_len
        if prompt_tokens >= limit:
            raise APIError(
                400,
                f"This model's maximum context length is {limit} tokens, and your prompt has {prompt_tokens} tokens. Shorten the messages.",
                param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )
        wanted = body.requested_max_tokens()
        if wanted is not None and prompt_tokens + wanted > limit:
            raise APIError(
                400,
                f"This model's maximum context length is {limit} tokens. You requested {prompt_tokens + wanted} tokens "
                f"({prompt_tokens} in the prompt, {wanted} for the answer). Ask for at most {limit - prompt_tokens} tokens.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        temperature = self.config.default_temperature if body.temperature is None else body.temperature
        top_p = self.config.default_top_p if body.top_p is None else body.top_p
        return SamplingParams(
            max_tokens=wanted if wanted is not None else min(self.config.default_max_tokens, limit - prompt_tokens),
            temperature=float(temperature),
            top_p=float(top_p),
            seed=body.seed,
            stop=tuple(body.stop or ()) + param_stops,
            ignore_eos=body.ignore_eos,
        )

    def _check_common(self, body: ChatCompletionRequest | CompletionRequest, prompts: int) -> ModelRef:
        """Supported fields, the per-request caps (before any prompt is rendered or tokenized), the served model."""
        body.check_supported()
        c = self.config
        # an answer never outgrows the context: a larger max_tokens is the context-length 400 (sampling), not this cap's
        max_tokens = min(body.requested_max_tokens() or c.default_max_tokens, self.max_model_len)
        check_counts(body.n, prompts, max_tokens, max_n=c.max_n, max_prompts=c.max_prompts, max_total_tokens=c.max_total_tokens)
        return self.catalog.resolve(body.model)

    def fair_share(self, n: int) -> FairShare:
        return FairShare(self.config.max_sequences_per_request, n)

    def _check_size(self, texts: list[str], param: str) -> None:
        check_text_size(sum(len(t.encode("utf-8")) for t in texts), self.max_model_len, self.token_bytes, param)

    async def prepare_chat(self, body: ChatCompletionRequest, request_id: str) -> Job:
        from caregpt.serve.medical import split_model_name

        model, suffix_kb = split_model_name(body.model)
        knowledge_base = getattr(body, "knowledge_base", None) or suffix_kb
        if suffix_kb:
            body = body.model_copy(update={"model": model})
        ref = self._check_common(body, 1)
        messages = normalize_messages(body.messages)
        self._check_size([m["content"] for m in messages], "messages")  # before the guard, the template and the tokenizer
        medical = await self.medical.apply(messages, knowledge_base)
        if medical.refuse:  # answered by the guard alone
            job = Job(ref, [], self.sampling(body, 0), body.n, request_id, time.monotonic() + self.config.request_timeout_s)
            job.prefix, job.canned = medical.prefix, True
            return job
        messages = medical.messages
        template = self.template(ref.template)
        size = sum(len(m["content"]) for m in messages)
        encode = template.encode_prompt
        try:
            ids = await asyncio.to_thread(encode, self.tokenizer, messages) if size > _LARGE_TEXT_CHARS else encode(self.tokenizer, messages)
        except ValueError as exc:  # the template refused the conversation shape
            raise errors.bad_request(str(exc), "messages") from None
        job = Job(ref, ids, self.sampling(body, len(ids)), body.n, request_id, time.monotonic() + self.config.request_timeout_s)
        job.prefix, job.suffix, job.citations = medical.prefix, medical.suffix, medical.citations or None
        return job

    def triage(self, text: str, k: int) -> dict[str, Any]:
        """POST /v1/triage: top-k departments of the configured guides, with the guide sentences that matched."""
        if not self.config.triage_guides:
            raise APIError(404, "Triage is not configured on this server (set triage_guides).", type="invalid_request_error", code="not_configured")
        if self._triage is None:
            from caregpt.medical.catalog import load_catalog
            from caregpt.medical.triage import DepartmentTriage

            self._triage = DepartmentTriage(load_catalog(self.config.triage_guides))
        return self._triage.recommend(text, k=k).to_dict()

    async def prepare_completion(self, body: CompletionRequest, request_id: str) -> list[Job]:
        prompts = body.prompts()
        ref = self._check_common(body, len(prompts))
        self._check_size(prompts, "prompt")
        jobs = []
        for i, prompt in enumerate(prompts):
            if len(prompt) > _LARGE_TEXT_CHARS:
                ids = await asyncio.to_thread(self.tokenizer.encode, prompt)
            else:
                ids = self.tokenizer.encode(prompt)
            if not ids:
                raise errors.bad_request(f"prompt[{i}] is empty.", "prompt")
            jobs.append(Job(ref, list(ids), self.sampling(body, len(ids)), body.n, f"{request_id}-p{i}", time.monotonic() + self.config.request_timeout_s))
        return jobs

    # ---- talking to the model deployment --------------------------------------------------------
    async def open_stream(self, job: Job) -> tuple[Any, list[TokenEvent]]:
        """Start generation and wait for the first events (so failures can still be a proper HTTP error)."""
        from ray.serve.exceptions import BackPressureError

        died = _replica_death_errors()
        handle = self.llm.options(stream=True, multiplexed_model_id=job.ref.adapter)
        for attempt in range(_RETRIES_ON_REPLICA_DEATH + 1):
            stream = handle.generate.remote(job.payload())
            try:
                first = await asyncio.wait_for(stream.__anext__(), timeout=job.remaining())
                return stream, first
            except BackPressureError as exc:
                raise errors.overloaded(getattr(exc, "retry_after_s", None) or 1.0, "All model replicas are busy") from None
            except asyncio.TimeoutError:
                stream.cancel()
                raise errors.timeout(self.config.request_timeout_s) from None
            except APIError:
                raise
            except died:
                if attempt == _RETRIES_ON_REPLICA_DEATH:
                    raise errors.overloaded(2.0, "No model replica is available (one is restarting)") from None
                logger.warning("model replica died before answering request %s; retrying (%d)", job.request_id, attempt + 1)
                await asyncio.sleep(0.25 * (attempt + 1))
            except StopAsyncIteration:
                raise errors.internal("The model replica ended the answer without output.") from None
        raise errors.internal()  # not reached

    async def events(self, job: Job, opened: tuple[Any, list[TokenEvent]] | None = None) -> AsyncIterator[list[TokenEvent]]:
        """All event batches of a job (opened: what open_stream returned, if called already).

        Raises APIError on timeouts and engine failures, ReplicaDied if the replica stopped mid-answer.
        """
        stream, first = opened or await self.open_stream(job)
        try:
            yield first
            while True:
                try:
                    batch = await asyncio.wait_for(stream.__anext__(), timeout=job.remaining())
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise errors.timeout(self.config.request_timeout_s) from None
                yield batch
        except _replica_death_errors():
            raise ReplicaDied(job.request_id) from None
        finally:
            stream.cancel()  # no-op when finished; stops the engine when the client left or timed out

    async def collect(self, job: Job) -> dict[int, dict[str, Any]]:
        """Run a job to the end: {choice: {"text", "tokens", "finish"}}; retried whole if a replica dies."""
        for attempt in range(_RETRIES_ON_REPLICA_DEATH + 1):
            out: dict[int, dict[str, Any]] = {i: {"text": [], "tokens": 0, "finish": None} for i in range(job.n)}
            try:
                async for batch in self.events(job):
                    for ev in batch:
                        choice = out[ev.choice]
                        choice["text"].append(ev.text)
                        choice["tokens"] = ev.tokens
                        choice["finish"] = ev.finish or choice["finish"]
                return {i: {**c, "text": "".join(c["text"])} for i, c in out.items()}
            except ReplicaDied:
                if attempt == _RETRIES_ON_REPLICA_DEATH:
                    raise errors.overloaded(2.0, "The model replica serving this request stopped") from None
                logger.warning("model replica died during request %s; running it again (%d)", job.request_id, attempt + 1)
        raise errors.internal()  # not reached

    def check_health(self) -> None:
        """Serve calls this periodically; with the model in this replica, its health is ours."""
        from caregpt.serve.local_model import LocalHandle

        if isinstance(self.llm, LocalHandle):  # (a deployment handle answers every attribute name, so no hasattr)
            self.llm.check_health()

    async def ready(self) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self.llm.ready.remote(), timeout=5)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            raise APIError(503, f"The model deployment is not ready: {type(exc).__name__}.", type="server_error", code="not_ready", headers={"Retry-After": "5"}) from None
