"""Benchmark: the Ray Serve chat API under load, vs one request at a time, vs `transformers serve`, vs in-process.

Everything runs on this machine with the project venv; nothing is downloaded (HF_HUB_OFFLINE=1).

* Model: the ``bench34m`` preset of :mod:`caregpt.models.tiny` (Llama architecture, ~34M parameters,
  the training benchmark's model), built into a temp dir with a tokenizer trained on the shared SFT
  and pretraining text (``--model DIR`` reuses one). Random weights: answers are noise, lengths are not.
* Requests: chat completions, streamed, greedy, 128-token answers (``ignore_eos`` for ours;
  `transformers serve` refuses unknown fields and may stop at EOS, so output tokens are what each
  server reports in its usage chunk, else what came back re-tokenized), prompts from
  the first questions of ``../shared/data/sft_toyhom_im_department.jsonl`` (chatml template).
* Load generator: our own, async, the official ``openai`` client; fixed concurrency or Poisson arrivals (``--rate``).
* Metrics, in the vLLM benchmark's terms: TTFT (request sent -> first content chunk), TPOT (per
  request: (last chunk - first chunk) / (output tokens - 1)), ITL (gaps between content chunks),
  end-to-end latency, p50 / p99 of each; output tokens/s = all output tokens / wall time.

Scenarios (``--only`` picks some):
  ``ray-colocated``   our app with ``colocate_router: true`` (router and engine in one replica) at C=1 and C=32
  ``ray-continuous``  our app as two deployments (router -> model replica) at C=1 and C=32
  ``hf-serve``        ``transformers serve --continuous-batching`` on the same model at C=32 (same KV size)
  ``in-process``      the same engine called in this process, C=1 (TTFT without HTTP and Ray)

Each app is reached through caregpt's front proxy (a subprocess of its own, as the KubeRay sidecar runs
it), which sends requests straight to the app's replicas (Ray Serve direct ingress, as `caregpt serve`
does; ``--serve-proxy``: through Serve's HTTP proxy instead, the path before direct ingress). Each Ray app
runs ``--replicas`` model replicas of ``--threads`` torch threads (default: one 1-thread replica per core,
the layout that decodes fastest on CPUs); the in-process engine uses ``--threads`` too (it is "the same
engine" the TTFT ratio compares with); `transformers serve` is one process and gets ``--hf-threads``
(default: every core).

Ratios printed per app (targets, never asserted): output tokens/s at C=32 vs transformers serve >= 1.2x;
TTFT p50 at C=1 through HTTP vs in-process <= 1.25x; C=32 vs C=1 output tokens/s >= 6x. The per-message
hop (replica -> [router ->] HTTP proxy -> client) is shown as ITL p50 at C=1 over HTTP minus in-process.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_load.py --json /tmp/serve_load.json
    .venv/bin/python benchmarks/serve_load.py --only ray-continuous,hf-serve --requests 32   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import harness


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SFT = SHARED / "sft_toyhom_im_department.jsonl"
PRETRAIN = SHARED / "pretrain_medicalgpt_fever.txt"
SCENARIOS = ("ray-colocated", "ray-continuous", "hf-serve", "in-process")
RAY_APPS = {"ray-colocated": True, "ray-continuous": False}  # scenario -> colocate_router
CLIENT_TIMEOUT_S = 300.0  # a request still streaming after this counts as failed (--client-timeout)
IGNORE_EOS = {"ignore_eos": True}  # ours (vLLM's extension); transformers serve refuses unknown fields


@dataclass
class Sample:
    ttft: float
    e2e: float
    tokens: int
    gaps: list[float] = field(default_factory=list)

    @property
    def tpot(self) -> float | None:
        return (self.e2e - self.ttft) / (self.tokens - 1) if self.tokens > 1 else None


@dataclass
class Result:
    scenario: str
    concurrency: int
    requests: int
    wall_s: float
    output_tokens: int
    failures: int
    samples: list[Sample] = field(default_factory=list, repr=False)
    rounds: list[float] = field(default_factory=list)  # output tokens/s of each round, when merged

    @property
    def tokens_per_s(self) -> float:
        if self.rounds:
            return statistics.median(self.rounds)
        return self.output_tokens / self.wall_s if self.wall_s else 0.0

    @classmethod
    def merged(cls, runs: list[Result]) -> Result:
        """Several rounds of one scenario: latencies pooled, throughput = the median round."""
        first = runs[0]
        return cls(first.scenario, first.concurrency, sum(r.requests for r in runs), sum(r.wall_s for r in runs),
                   sum(r.output_tokens for r in runs), sum(r.failures for r in runs), [s for r in runs for s in r.samples],
                   [r.output_tokens / r.wall_s for r in runs if r.wall_s])

    def summary(self) -> dict:
        def pct(values, q):
            values = sorted(v for v in values if v is not None)
            return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else None

        ttft, tpot, e2e = [s.ttft for s in self.samples], [s.tpot for s in self.samples], [s.e2e for s in self.samples]
        gaps = [g for s in self.samples for g in s.gaps]
        return {
            "scenario": self.scenario, "concurrency": self.concurrency, "requests": self.requests, "failures": self.failures,
            "output_tokens": self.output_tokens, "wall_s": round(self.wall_s, 2), "output_tokens_per_s": round(self.tokens_per_s, 1),
            "rounds_tokens_per_s": [round(r, 1) for r in self.rounds],
            "ttft_ms_p50": _ms(pct(ttft, 50)), "ttft_ms_p99": _ms(pct(ttft, 99)),
            "tpot_ms_p50": _ms(pct(tpot, 50)), "tpot_ms_p99": _ms(pct(tpot, 99)),
            "itl_ms_p50": _ms(pct(gaps, 50)), "itl_ms_p99": _ms(pct(gaps, 99)),
            "e2e_s_p50": _s(pct(e2e, 50)), "e2e_s_p99": _s(pct(e2e, 99)),
        }


def _ms(v):
    return None if v is None else round(v * 1000, 1)


def _s(v):
    return None if v is None else round(v, 2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def questions(n: int) -> list[list[dict[str, str]]]:
    out = []
    with SFT.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            text = (rec.get("instruction", "") + "\n" + rec.get("input", "")).strip()
            if text:
                out.append([{"role": "user", "content": text[:200]}])
            if len(out) >= n:
                break
    return out


def build_model(workdir: Path) -> Path:
    from caregpt.models.tiny import build_tiny_model

    print("building the bench34m model (tokenizer training + random init)...", flush=True)
    return Path(build_tiny_model("bench34m", [SFT, PRETRAIN], workdir / "bench34m", seed=0))


# ---- the load generator -----------------------------------------------------------------------------
async def one_request(client, model: str, messages, max_tokens: int, tokenizer, extra: dict | None = None) -> Sample:
    start = time.perf_counter()
    first = last = None
    gaps: list[float] = []
    text: list[str] = []
    usage = None
    stream = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body=extra,
    )
    async for chunk in stream:
        now = time.perf_counter()
        if getattr(chunk, "usage", None):
            usage = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = now
            else:
                gaps.append(now - last)
            last = now
            text.append(chunk.choices[0].delta.content)
    end = time.perf_counter()
    tokens = usage or len(tokenizer.encode("".join(text), add_special_tokens=False))
    return Sample(ttft=(first or end) - start, e2e=end - start, tokens=tokens, gaps=gaps)


async def run_load(base_url: str, model: str, prompts, *, concurrency: int, requests: int, max_tokens: int, tokenizer, rate: float | None = None, label: str = "", extra: dict | None = None) -> Result:
    """`requests` streamed chat completions, at most `concurrency` at once; extra: server-specific body fields."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=os.environ.get("CAREGPT_BENCH_KEY", "none"), timeout=CLIENT_TIMEOUT_S, max_retries=0)
    for p in prompts[:2]:  # warm-up, not timed
        await one_request(client, model, p, 8, tokenizer, extra)
    samples: list[Sample] = []
    failures = 0
    todo = list(range(requests))
    gate = asyncio.Semaphore(concurrency)

    async def send(i: int):
        nonlocal failures
        async with gate:
            try:
                samples.append(await one_request(client, model, prompts[i % len(prompts)], max_tokens, tokenizer, extra))
            except Exception as exc:  # noqa: BLE001 - counted and shown
                failures += 1
                print(f"  request failed: {type(exc).__name__}: {str(exc)[:160]}", flush=True)

    start = time.perf_counter()
    if rate:  # Poisson arrivals, at most `concurrency` in flight
        import random

        tasks = []
        for i in todo:
            tasks.append(asyncio.create_task(send(i)))
            await asyncio.sleep(random.expovariate(rate))
        await asyncio.gather(*tasks)
    else:
        await asyncio.gather(*(send(i) for i in todo))
    wall = time.perf_counter() - start
    result = Result(label, concurrency, requests, wall, sum(s.tokens for s in samples), failures, samples)
    print(f"  {label} C={concurrency}: {result.tokens_per_s:.1f} output tok/s over {wall:.1f} s ({failures} failed)", flush=True)
    return result


# ---- the servers -----------------------------------------------------------------------------------
def deploy_ray(model_dir: Path, scenario: str, args) -> str:
    from ray import serve

    from caregpt.serve.app import build_app

    name = f"bench-{scenario}"
    settings = {
        "model_name_or_path": str(model_dir), "served_model_name": "bench34m", "template": "chatml",
        "colocate_router": RAY_APPS[scenario], "max_batch_size": args.max_batch_size,
        "num_replicas": args.replicas, "num_cpus": args.threads, "router_num_cpus": 0.1, "torch_threads": args.threads,
        "max_ongoing_requests": max(64, args.concurrency * 2), "max_model_len": 2048, "request_timeout_s": 900,
    }
    serve.run(build_app(settings), name=name, route_prefix=f"/{name}", blocking=False)
    deadline = time.monotonic() + 600
    while serve.status().applications[name].status != "RUNNING":
        if time.monotonic() > deadline or serve.status().applications[name].status == "DEPLOY_FAILED":
            raise RuntimeError(f"{name} did not start: {serve.status().applications[name].message}")
        time.sleep(0.5)
    return name


def start_front(serve_port: int, app: str | None) -> tuple[subprocess.Popen, str]:
    """caregpt's front proxy before Serve's, in its own process (as the KubeRay sidecar runs it); with an app name
    it forwards to that app's replicas directly (joining this Ray to ask for their ports)."""
    import ray

    port = free_port()
    cmd = [sys.executable, "-m", "caregpt.serve.front", "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{serve_port}"]
    cmd += ["--direct_app", app] if app else []
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert "listening" in proc.stdout.readline(), "the front proxy did not start"
    return proc, f"http://127.0.0.1:{port}"


def start_hf_serve(model_dir: Path, args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    cmd = [str(exe), "serve", str(model_dir), "--continuous-batching", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
           "--cb-num-blocks", str(-(-max(2048, args.max_batch_size * 512) // 256)), "--cb-max-batch-tokens", "1024", "--log-level", "warning"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.hf_threads)}
    log = open(Path(args.workdir) / "transformers_serve.log", "a")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited ({proc.returncode}); see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError("transformers serve did not become healthy in 300 s")


class InProcess:
    """The same engine the model replica runs (continuous batching), called directly: TTFT without HTTP and Ray."""

    def __init__(self, model_dir: Path, threads: int):
        import torch

        from caregpt.models.inference import InferenceSpec, load_for_inference
        from caregpt.serve.hf_engine import TransformersEngine

        torch.set_num_threads(threads)
        loaded = load_for_inference(InferenceSpec(str(model_dir), template="chatml", device="cpu"))  # the one inference loader
        self.tok, self.template = loaded.tokenizer, loaded.template
        self.engine = TransformersEngine(loaded.model, self.tok, template_stops=self.template.stop_strings, max_batch_size=32, max_model_len=2048)
        self._count = 0

    async def one(self, messages, max_tokens: int) -> Sample:
        from caregpt.serve.engine import GenerationRequest
        from caregpt.serve.sampling import SamplingParams

        self._count += 1
        ids = self.template.encode_prompt(self.tok, messages)
        start = time.perf_counter()
        first = last = None
        gaps: list[float] = []
        count = 0
        async for out in self.engine.generate(GenerationRequest(f"inproc-{self._count}", ids, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))):
            now = time.perf_counter()
            if out.text:
                gaps += [now - last] if first is not None else []
                first, last = first or now, now
            count = out.num_tokens
        end = time.perf_counter()
        return Sample(ttft=(first or end) - start, e2e=end - start, tokens=count, gaps=gaps)

    async def run(self, prompts, requests: int, max_tokens: int) -> Result:
        for p in prompts[:2]:
            await self.one(p, 8)  # warm-up, not timed
        samples = [await self.one(prompts[i % len(prompts)], max_tokens) for i in range(requests)]
        result = Result("in-process", 1, requests, sum(s.e2e for s in samples), sum(s.tokens for s in samples), 0, samples)
        print(f"  in-process C=1: TTFT p50 {statistics.median(s.ttft for s in samples) * 1000:.1f} ms", flush=True)
        return result

    def close(self) -> None:
        self.engine.shutdown()


# ---- main ------------------------------------------------------------------------------------------
# (header, key of Result.summary(), format): C is the concurrency; latencies per request (ITL: per chunk)
TABLE = [
    ("scenario", "scenario", ""), ("C", "concurrency", ""), ("requests", "requests", ""), ("failed", "failures", ""),
    ("out tok/s", "output_tokens_per_s", ".1f"),
    ("TTFT p50 ms", "ttft_ms_p50", ".1f"), ("TTFT p99 ms", "ttft_ms_p99", ".1f"),
    ("TPOT p50 ms", "tpot_ms_p50", ".1f"), ("TPOT p99 ms", "tpot_ms_p99", ".1f"),
    ("ITL p50 ms", "itl_ms_p50", ".1f"), ("ITL p99 ms", "itl_ms_p99", ".1f"),
    ("e2e p50 s", "e2e_s_p50", ".2f"), ("e2e p99 s", "e2e_s_p99", ".2f"),
]


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def report(results: dict[str, Result]) -> dict:
    rows = [r.summary() for r in results.values()]
    print()
    harness.print_table(rows, TABLE)

    get = results.get
    hf, inproc = get("hf-serve@32"), get("in-process@1")
    ratios = {}
    for app in RAY_APPS:
        c32, c1 = get(f"{app}@32"), get(f"{app}@1")
        ratios[f"{app}: c32 output tok/s vs transformers serve (target >= 1.2)"] = ratio(c32 and c32.tokens_per_s, hf and hf.tokens_per_s)
        ratios[f"{app}: TTFT p50 c1 HTTP vs in-process (target <= 1.25)"] = ratio(c1 and c1.summary()["ttft_ms_p50"], inproc and inproc.summary()["ttft_ms_p50"])
        ratios[f"{app}: c32 vs c1 output tok/s (target >= 6)"] = ratio(c32 and c32.tokens_per_s, c1 and c1.tokens_per_s)
        hop = c1 and inproc and c1.summary()["itl_ms_p50"] is not None and inproc.summary()["itl_ms_p50"] is not None
        ratios[f"{app}: per-message hop ms (ITL p50 c1 HTTP - in-process)"] = round(c1.summary()["itl_ms_p50"] - inproc.summary()["itl_ms_p50"], 2) if hop else None
    print("\nratios (noisy on a shared machine):\n" + "\n".join(f"  {k}: {v}" for k, v in ratios.items()))
    return {"results": rows, "ratios": ratios}


async def main_async(args) -> dict:
    """Start every server once, then run the scenarios in rounds, alternating, so load from others spreads evenly."""
    from transformers import AutoTokenizer

    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    model_dir = Path(args.model) if args.model else build_model(Path(args.workdir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = questions(64)
    runs: dict[str, list[Result]] = {}
    targets: list[tuple[str, str, str, dict | None, list[dict]]] = []  # label, url, model, extra body, loads
    c1 = dict(concurrency=1, requests=args.requests_c1)
    cn = dict(concurrency=args.concurrency, requests=args.requests)
    cleanups = []
    try:
        ray_apps = [a for a in RAY_APPS if a in only]
        if ray_apps:
            import ray
            from ray import serve

            from caregpt.runtime import ensure_ray

            if not args.serve_proxy:
                from caregpt.serve.ingress import prefer_direct_ingress

                prefer_direct_ingress()
            ensure_ray(num_cpus=max(4, len(ray_apps) * args.replicas * args.threads + 1))  # logical CPUs: every app's replicas at once
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            cleanups.append(lambda: (serve.shutdown(), ray.shutdown()))
            fronts: list[subprocess.Popen] = []
            cleanups.append(lambda: [(f.terminate(), f.wait(timeout=60)) for f in fronts])
            for app in ray_apps:
                print(f"deploying the Ray Serve app ({app})...", flush=True)
                name = deploy_ray(model_dir, app, args)
                front, front_url = start_front(port, None if args.serve_proxy else name)
                fronts.append(front)
                targets.append((app, f"{front_url}/{name}/v1", "bench34m", IGNORE_EOS, [c1, cn]))
        hf_loads = [c1, cn] if args.hf_c1 else [cn]
        hf_proc: list[subprocess.Popen] = []
        cleanups.append(lambda: [(p.terminate(), p.wait(timeout=60)) for p in hf_proc if p.poll() is None])
        inproc = None
        if "in-process" in only:
            inproc = InProcess(model_dir, args.threads)
            cleanups.append(inproc.close)
        for round_ in range(args.repeat):
            print(f"round {round_ + 1}/{args.repeat}", flush=True)
            for label, url, model, extra, loads in targets:
                for load in loads:
                    res = await run_load(url, model, prompts, max_tokens=args.max_tokens, tokenizer=tokenizer, rate=args.rate, label=label, extra=extra, **load)
                    runs.setdefault(f"{label}@{load['concurrency']}", []).append(res)
            if "hf-serve" in only:
                # A fresh server every round: in our runs transformers serve 5.24 sometimes left a few streams
                # unfinished after ~100 requests; one hang should not spoil the other rounds.
                print("starting transformers serve --continuous-batching...", flush=True)
                proc, url = start_hf_serve(model_dir, args)
                hf_proc.append(proc)
                for load in hf_loads:
                    res = await run_load(url, str(model_dir), prompts, max_tokens=args.max_tokens, tokenizer=tokenizer, rate=args.rate, label="hf-serve", **load)
                    runs.setdefault(f"hf-serve@{load['concurrency']}", []).append(res)
                proc.terminate()
                proc.wait(timeout=60)
            if inproc is not None:
                runs.setdefault("in-process@1", []).append(await inproc.run(prompts, args.requests_c1, args.max_tokens))
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - best effort
                print(f"cleanup failed: {exc}")
    return report({key: Result.merged(results) for key, results in runs.items()})


def main(argv=None) -> int:
    global CLIENT_TIMEOUT_S
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--only", default="", help=f"comma separated scenarios (default: all): {', '.join(SCENARIOS)}")
    parser.add_argument("--model", default=None, help="reuse a built model directory instead of building bench34m")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrency of the loaded runs (default 32)")
    parser.add_argument("--requests", type=int, default=64, help="requests in each loaded run (default 64)")
    parser.add_argument("--requests-c1", type=int, default=6, help="requests in each one-at-a-time run (default 6)")
    parser.add_argument("--max-tokens", type=int, default=128, help="answer length (default 128)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; scenarios alternate within a round, throughput is the median round (default 3)")
    parser.add_argument("--client-timeout", type=float, default=CLIENT_TIMEOUT_S, help="seconds before a request counts as failed (default 300)")
    parser.add_argument("--hf-c1", action="store_true", help="also run transformers serve one request at a time")
    parser.add_argument("--rate", type=float, default=None, help="Poisson arrival rate (requests/s) instead of back-to-back requests")
    parser.add_argument("--max-batch-size", type=int, default=32, help="engine batch size (default 32)")
    parser.add_argument("--replicas", type=int, default=os.cpu_count() or 2, help="model replicas of each Ray app (default: CPU count)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per Ray model replica and of the in-process engine (default 1)")
    parser.add_argument("--hf-threads", type=int, default=os.cpu_count() or 2, help="torch threads of transformers serve, one process (default: CPU count)")
    parser.add_argument("--serve-proxy", action="store_true", help="front -> Serve's HTTP proxy -> replica, instead of front -> replica (direct ingress)")
    parser.add_argument("--workdir", default=None, help="where the model and logs go (default: a temp dir, deleted unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    CLIENT_TIMEOUT_S = args.client_timeout
    temp = args.workdir is None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="caregpt-serve-bench-")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    try:
        out = asyncio.run(main_async(args))
        out["settings"] = vars(args)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, ensure_ascii=False))
    finally:
        if temp and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
        elif temp:
            print(f"kept {args.workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
