"""OpenAI-compatible stand-ins of our own, served for real with uvicorn on a free port.

- ChatStandIn: POST /v1/chat/completions. A `[fault:NAME]` tag in the prompt picks a failure to inject
  (429 with Retry-After, 503, 500s, hangs longer than the client timeout, garbage bodies, ...); without a tag,
  and after a transient fault, it answers well. Every attempt is logged (time, key, outcome) for assertions.
- FineTuneStandIn: POST /v1/files, POST /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs/{id}.

Nothing here is imported by the library.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections import defaultdict
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

FAULT = re.compile(r"\[fault:([a-z0-9_]+)\]")
# common characters for varied, clearly Chinese answers (so de-duplication keeps them apart)
POOL = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"


def _pick_port_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a port nobody else holds, kept bound until uvicorn takes it over
    return sock


@contextmanager
def serve(app: FastAPI):
    """Run `app` with uvicorn in a thread; yields the base URL (http://127.0.0.1:PORT/v1)."""
    sock = _pick_port_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the stand-in server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def answer_text(key: str, length: int | None = None) -> str:
    """A deterministic, varied Chinese answer for one request key (its length varies with the key too)."""
    rng = random.Random(hashlib.sha256(key.encode()).hexdigest())
    body = "".join(rng.choice(POOL) for _ in range(length or rng.randint(50, 120)))
    return f"建议如下：{body}。如症状加重请及时就医。"


class ChatStandIn:
    """A fault-injecting chat completions server. `delay` slows every good answer (for kill-and-resume tests)."""

    def __init__(self, delay: float = 0.0, retry_after: float = 1.0, hang: float = 3.0, api_key: str | None = None):
        self.delay, self.retry_after, self.hang, self.api_key = delay, retry_after, hang, api_key
        self.attempts: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self.log: list[tuple[float, str, str, str, str]] = []  # (time, key, fault, outcome, prompt)
        self.lock = threading.Lock()

    def _record(self, key: str, fault: str, outcome: str, prompt: str = "") -> int:
        with self.lock:
            self.attempts[key].append((time.monotonic(), outcome))
            self.log.append((time.monotonic(), key, fault, outcome, prompt))
            return len(self.attempts[key])

    def answered(self, text: str) -> int:
        """How many good answers went to prompts containing `text`."""
        with self.lock:
            return sum(1 for _, _, _, outcome, prompt in self.log if outcome == "ok" and text in prompt)

    @staticmethod
    def _completion(text: str, prompt: str, finish: str = "stop") -> dict:
        return {
            "id": "chatcmpl-" + hashlib.sha1((prompt + text).encode()).hexdigest()[:12], "object": "chat.completion",
            "created": int(time.time()), "model": "standin-teacher",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(text), "total_tokens": len(prompt) + len(text)},
        }

    def _good_reply(self, fault: str, prompt: str, key: str) -> dict:
        if fault == "refuse":
            return self._completion("抱歉，作为一个AI语言模型，我无法回答这个问题。", prompt)
        if fault == "english":
            return self._completion("Drink plenty of water, rest well and see a doctor if the fever lasts more than three days.", prompt)
        if fault == "dup":
            return self._completion("多喝水，注意休息，按时服药，如果持续发热超过三天或者出现呼吸困难，请及时到医院就诊。", prompt)
        if fault == "length":
            return self._completion(answer_text(key), prompt, finish="length")
        if fault == "badjson_content" or fault == "badverdict":
            return self._completion("这个嘛，很难说。", prompt)
        if "回答A" in prompt and "回答B" in prompt:
            a = prompt.split("回答A：", 1)[1].split("回答B：", 1)[0].strip()
            b = prompt.split("回答B：", 1)[1].split("\n\n", 1)[0].strip()
            return self._completion(json.dumps({"better": "A" if len(a) >= len(b) else "B", "reason": "更完整"}), prompt)
        if '"role"' in prompt:
            turns = []
            for n in range(3):
                turns.append({"role": "user", "content": "医生您好，" + answer_text(key + f"u{n}", 20)})
                turns.append({"role": "assistant", "content": answer_text(key + f"a{n}", 40)})
            return self._completion("```json\n" + json.dumps(turns, ensure_ascii=False) + "\n```", prompt)
        return self._completion(answer_text(key), prompt)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
            body = await request.json()
            messages = body.get("messages", [])
            prompt = messages[-1]["content"] if messages else ""
            match = FAULT.search(prompt)
            fault = match.group(1) if match else ""
            key = hashlib.sha1(json.dumps([messages, body.get("temperature")], ensure_ascii=False).encode()).hexdigest()
            with self.lock:
                attempt = len(self.attempts[key]) + 1
            transient = {"429once": 1, "503once": 1, "500twice": 2, "timeoutonce": 1, "garbageonce": 1, "htmlonce": 1}
            failing = fault in ("500always", "timeoutalways", "garbagealways", "emptychoices", "badrequest", "429long") or attempt <= transient.get(fault, 0)
            if failing:
                if fault in ("429once", "429long"):
                    self._record(key, fault, "429")
                    wait = 3600 if fault == "429long" else self.retry_after
                    return JSONResponse({"error": {"message": "rate limited", "type": "rate_limit"}}, status_code=429, headers={"Retry-After": f"{wait:g}"})
                if fault == "503once":
                    self._record(key, fault, "503")
                    return JSONResponse({"error": {"message": "overloaded"}}, status_code=503, headers={"Retry-After": f"{self.retry_after:g}"})
                if fault.startswith("500"):
                    self._record(key, fault, "500")
                    return JSONResponse({"error": {"message": "boom"}}, status_code=500)
                if fault.startswith("timeout"):
                    self._record(key, fault, "hang")
                    await asyncio.sleep(self.hang)
                    return JSONResponse(self._completion("太迟了", prompt))
                if fault.startswith("garbage"):
                    self._record(key, fault, "garbage")
                    return Response('{"choices": [{"message": ', media_type="application/json")
                if fault == "htmlonce":
                    self._record(key, fault, "html")
                    return PlainTextResponse("<html><body>502 upstream</body></html>", media_type="text/html")
                if fault == "emptychoices":
                    self._record(key, fault, "empty")
                    return JSONResponse({"id": "x", "object": "chat.completion", "choices": []})
                if fault == "badrequest":
                    self._record(key, fault, "400")
                    return JSONResponse({"error": {"message": "bad model"}}, status_code=400)
            if self.delay:
                await asyncio.sleep(self.delay)
            self._record(key, fault, "ok", prompt)
            return JSONResponse(self._good_reply(fault, prompt, key))

        return app


class FineTuneStandIn:
    """Files + fine-tuning jobs, checking the bearer key; a job moves on one status per GET."""

    STATUSES = ["validating_files", "queued", "running", "succeeded"]

    def __init__(self, api_key: str = "sk-standin"):
        self.api_key = api_key
        self.files: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}

    def app(self) -> FastAPI:
        app = FastAPI()

        def unauthorized(request: Request):
            if request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"error": {"message": "invalid api key", "type": "invalid_request_error"}}, status_code=401)
            return None

        @app.post("/v1/files")
        async def upload(request: Request, file: UploadFile = File(...), purpose: str = Form(...)):
            if (denied := unauthorized(request)) is not None:
                return denied
            content = await file.read()
            file_id = f"file-{len(self.files) + 1:04d}"
            self.files[file_id] = {"content": content, "purpose": purpose, "filename": file.filename}
            return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                    "filename": file.filename, "purpose": purpose, "status": "processed"}

        @app.post("/v1/fine_tuning/jobs")
        async def create_job(request: Request):
            if (denied := unauthorized(request)) is not None:
                return denied
            body = await request.json()
            training = body.get("training_file")
            if training not in self.files:
                return JSONResponse({"error": {"message": f"file {training} not found", "param": "training_file"}}, status_code=400)
            lines = [line for line in self.files[training]["content"].decode("utf-8").splitlines() if line.strip()]
            if any("messages" not in json.loads(line) for line in lines):
                return JSONResponse({"error": {"message": "training file has invalid lines"}}, status_code=400)
            job_id = f"ftjob-{len(self.jobs) + 1:04d}"
            self.jobs[job_id] = {"request": body, "polls": 0, "examples": len(lines)}
            return self._job(job_id)

        @app.get("/v1/fine_tuning/jobs/{job_id}")
        async def get_job(job_id: str, request: Request):
            if (denied := unauthorized(request)) is not None:
                return denied
            if job_id not in self.jobs:
                return JSONResponse({"error": {"message": "no such job"}}, status_code=404)
            self.jobs[job_id]["polls"] += 1
            return self._job(job_id)

        return app

    def _job(self, job_id: str) -> dict:
        job = self.jobs[job_id]
        request = job["request"]
        status = self.STATUSES[min(job["polls"], len(self.STATUSES) - 1)]
        return {
            "id": job_id, "object": "fine_tuning.job", "created_at": int(time.time()), "model": request["model"],
            "training_file": request["training_file"], "validation_file": request.get("validation_file"),
            "status": status, "hyperparameters": request.get("hyperparameters") or {"n_epochs": "auto"},
            "organization_id": "org-standin", "result_files": [], "seed": request.get("seed") or 0,
            "fine_tuned_model": f"ft:{request['model']}:{request.get('suffix') or 'caregpt'}:{job_id}" if status == "succeeded" else None,
            "finished_at": int(time.time()) if status == "succeeded" else None, "trained_tokens": None, "error": None,
        }
