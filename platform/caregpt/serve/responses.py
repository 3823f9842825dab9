"""Whole (non-streamed) OpenAI response bodies from engine events; streams are :mod:`caregpt.serve.sse`.

A completions request with several prompts runs them under the request's fair share of the
engine (:class:`~caregpt.serve.limits.FairShare`), so other requests keep getting answered.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from caregpt.serve.observability import AccessRecord
from caregpt.serve.protocol import AssistantMessage, ChatChoice, ChatCompletionResponse, CompletionRequest, CompletionResponse, TextChoice, Usage
from caregpt.serve.router import Job, OpenAIRouter


async def chat_completion(router: OpenAIRouter, job: Job, record: AccessRecord) -> dict[str, Any]:
    if job.canned:  # the guard answered; the model was not called
        results = {i: {"text": "", "tokens": 0, "finish": "stop"} for i in range(job.n)}
    else:
        results = await router.collect(job)
    record.first_token_at = record.first_token_at or time.perf_counter()
    record.completion_tokens = sum(r["tokens"] for r in results.values())
    choices = [ChatChoice(index=i, message=AssistantMessage(content=job.prefix + r["text"] + job.suffix), finish_reason=r["finish"] or "stop")
               for i, r in sorted(results.items())]
    body = ChatCompletionResponse(id=record.response_id, model=job.ref.name, choices=choices, usage=Usage.of(len(job.prompt_ids), record.completion_tokens))
    data = body.model_dump(mode="json")
    if job.citations:
        data["citations"] = job.citations
    return data


async def completion(router: OpenAIRouter, body: CompletionRequest, jobs: list[Job], record: AccessRecord) -> dict[str, Any]:
    share = router.fair_share(body.n)

    async def run(job: Job) -> dict[int, dict[str, Any]]:
        async with share.turn():
            return await router.collect(job)

    results = await asyncio.gather(*(run(job) for job in jobs))
    record.first_token_at = record.first_token_at or time.perf_counter()
    prompts = body.prompts()
    choices = []
    for p, (job, result) in enumerate(zip(jobs, results)):
        for i, r in sorted(result.items()):
            text = prompts[p] + r["text"] if body.echo else r["text"]
            choices.append(TextChoice(index=p * job.n + i, text=text, finish_reason=r["finish"] or "stop"))
    record.completion_tokens = sum(r["tokens"] for result in results for r in result.values())
    usage = Usage.of(sum(len(j.prompt_ids) for j in jobs), record.completion_tokens)
    return CompletionResponse(id=record.response_id, model=jobs[0].ref.name, choices=choices, usage=usage).model_dump(mode="json")
