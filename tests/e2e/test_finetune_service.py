"""The fine-tuning service end to end: the official `openai` SDK against real Serve over HTTP, jobs run as
real Ray jobs (`caregpt train`, LoRA on the tiny model) on a real local Ray.

One app for the module (tiny model, an empty adapter root, two API keys). The tests run in file order and
share it: the whole SFT path, another key that sees nothing of the first's, bad uploads, a job that fails
validation with its line, a cancel through the unchanged `caregpt openai-finetune` client, and feedback ->
preference export -> DPO job that keeps running while the app restarts, then serves.

Run: .venv/bin/pytest tests/e2e/test_finetune_service.py -q   (a few minutes on a laptop CPU)
"""

from __future__ import annotations

import io
import json
import time

import httpx
import pytest

from tests.e2e.serve_support import delete_soon, deploy

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

KEY_A, KEY_B = "sk-ft-clinic-a", "sk-ft-clinic-b"
APP, PREFIX, BASE = "finetune_api", "/ft", "tiny-medical"
TOPICS = ["发烧", "咳嗽", "头痛", "腹泻", "皮疹", "失眠", "胸闷", "腰痛", "咽痛", "鼻塞", "耳鸣", "乏力"]


def chat_examples(n: int = 12) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "你是一名心内科医生。"},
                          {"role": "user", "content": f"我最近{TOPICS[i % len(TOPICS)]}，需要去医院吗？"},
                          {"role": "assistant", "content": f"{TOPICS[i % len(TOPICS)]}持续三天以上或加重，请到医院就诊。"}]} for i in range(n)]


def jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def ft_app(serve_http, tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft_root")
    adapters = tmp_path_factory.mktemp("ft_adapters")
    settings = {
        "model_name_or_path": tiny_model, "served_model_name": BASE, "adapters_dir": str(adapters), "api_keys": [KEY_A, KEY_B],
        "default_max_tokens": 16, "max_model_len": 512, "num_cpus": 0.5, "router_num_cpus": 0.1, "request_timeout_s": 120,
        "disclaimer": False, "max_loaded_adapters": 2,
        "finetune": {"storage_root": str(root), "max_file_bytes": 64 * 1024, "poll_interval_s": 0.5, "cutoff_len": 256,
                     "default_batch_size": 4, "base_learning_rate": 1e-3, "job_num_cpus": 1},
    }
    deploy(APP, PREFIX, settings)
    yield {"url": f"{serve_http}{PREFIX}/v1", "settings": settings, "root": root, "adapters": adapters}
    delete_soon(APP)


def answer_text(reply) -> str:
    # the untrained tiny model may answer only whitespace: a blank answer cannot be rated (the service refuses it)
    return (reply.choices[0].message.content or "").strip() or "（没有回答）"


def client_for(ft_app, key: str):
    from openai import OpenAI

    return OpenAI(base_url=ft_app["url"], api_key=key, timeout=120, max_retries=0)


def wait_for(client, job_id: str, statuses: tuple[str, ...], timeout_s: float = 900):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout_s} s")


@pytest.fixture(scope="module")
def sft_job(ft_app):
    """The whole path with the SDK: upload, create (suffix cardio, 1 epoch), poll to the end."""
    client = client_for(ft_app, KEY_A)
    uploaded = client.files.create(file=("cardio.jsonl", io.BytesIO(jsonl(chat_examples()))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=BASE, training_file=uploaded.id, suffix="cardio", hyperparameters={"n_epochs": 1})
    assert job.status == "validating_files" and job.hyperparameters.n_epochs == 1
    return {"file": uploaded, "job": wait_for(client, job.id, ("succeeded", "failed", "cancelled"))}


def test_whole_path_upload_train_watch_and_chat(ft_app, sft_job):
    client = client_for(ft_app, KEY_A)
    job = sft_job["job"]
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{BASE}:cardio:{job.id}" and job.finished_at >= job.created_at
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    losses = [e for e in events if e.type == "metrics"]
    assert losses and all("training loss=" in e.message and e.data["train_loss"] > 0 for e in losses)
    messages = [e.message for e in events]
    assert any(m.startswith("Validated training file: 12 examples") for m in messages)
    assert messages.index("The job has successfully completed") < messages.index("Fine-tuning job started")  # newest first
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints[0].fine_tuned_model_checkpoint == job.fine_tuned_model and checkpoints[0].step_number >= 1
    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    stream = client.chat.completions.create(model=job.fine_tuned_model, stream=True, max_tokens=12,
                                            messages=[{"role": "user", "content": "我最近发烧，需要去医院吗？"}])
    chunks = list(stream)
    assert chunks[0].model == job.fine_tuned_model
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert client.files.content(sft_job["file"].id).content == jsonl(chat_examples())


def test_another_key_sees_nothing_of_the_first(ft_app, sft_job):
    import openai

    other = client_for(ft_app, KEY_B)
    job, uploaded = sft_job["job"], sft_job["file"]
    assert list(other.files.list()) == [] and list(other.fine_tuning.jobs.list()) == []
    assert job.fine_tuned_model not in [m.id for m in other.models.list()]
    for call in (lambda: other.files.retrieve(uploaded.id), lambda: other.files.content(uploaded.id), lambda: other.files.delete(uploaded.id),
                 lambda: other.fine_tuning.jobs.retrieve(job.id), lambda: other.fine_tuning.jobs.cancel(job.id),
                 lambda: list(other.fine_tuning.jobs.list_events(job.id)),
                 lambda: other.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "你好"}])):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError, match="does not exist"):
        other.fine_tuning.jobs.create(model=BASE, training_file=uploaded.id)
    assert client_for(ft_app, KEY_A).files.retrieve(uploaded.id).id == uploaded.id  # still there for its owner


def test_bad_uploads_get_clear_4xx(ft_app):
    import openai

    client = client_for(ft_app, KEY_A)
    rows = chat_examples()
    rows[2] = {"messages": [{"role": "doctor", "content": "x"}, {"role": "assistant", "content": "y"}]}
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", io.BytesIO(jsonl(rows))), purpose="fine-tune")
    assert "line 3" in caught.value.message and "'doctor'" in caught.value.message
    with pytest.raises(openai.BadRequestError, match="line 5: not valid JSON"):
        client.files.create(file=("broken.jsonl", io.BytesIO(jsonl([*chat_examples()[:4], "{oops", *chat_examples()[4:]]))), purpose="fine-tune")
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", io.BytesIO(jsonl(chat_examples(400)))), purpose="fine-tune")
    assert caught.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", io.BytesIO(jsonl(chat_examples()))), purpose="batch")


def test_a_file_the_model_cannot_take_fails_the_job_with_its_line(ft_app):
    client = client_for(ft_app, KEY_A)
    rows = chat_examples()
    rows[10]["messages"][2]["content"] = "请尽快就医。" * 300  # far beyond cutoff_len 256 with the model's tokenizer
    uploaded = client.files.create(file=("long.jsonl", io.BytesIO(jsonl(rows))), purpose="fine-tune")  # the upload check estimates 65k
    job = client.fine_tuning.jobs.create(model=BASE, training_file=uploaded.id)
    job = wait_for(client, job.id, ("failed", "succeeded"), timeout_s=120)
    assert job.status == "failed" and job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 11" in job.error.message and "exceed" in job.error.message and job.error.model_extra["line"] == 11


def test_cancel_a_running_job_started_by_caregpt_openai_finetune(ft_app, tmp_path, monkeypatch, capsys):
    from ray.job_submission import JobStatus, JobSubmissionClient

    import ray
    from caregpt.data.openai_finetune import main as openai_finetune

    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(chat_examples()))
    monkeypatch.setenv("CLINIC_KEY", KEY_A)
    code = openai_finetune(["--api-base", ft_app["url"], "--api_key_env", "CLINIC_KEY", "--training_file", str(data),
                            "--model", BASE, "--suffix", "long", "--n_epochs", "40"])
    assert code == 0
    job_id = json.loads(capsys.readouterr().out.splitlines()[0])["job"]["id"]
    client = client_for(ft_app, KEY_A)
    running = wait_for(client, job_id, ("running", "succeeded", "failed"))
    assert running.status == "running"
    cancelled = client.fine_tuning.jobs.cancel(job_id)
    assert cancelled.status == "cancelled"
    jobs_api = JobSubmissionClient(ray.get_runtime_context().gcs_address)
    deadline = time.monotonic() + 60
    while jobs_api.get_job_status(f"caregpt-{job_id}") != JobStatus.STOPPED and time.monotonic() < deadline:
        time.sleep(1)
    assert jobs_api.get_job_status(f"caregpt-{job_id}") == JobStatus.STOPPED
    time.sleep(2)  # a monitor pass after the stop must not revive or publish it
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert not any(job_id in m.id for m in client.models.list())


def test_feedback_to_dpo_job_that_survives_an_app_restart(ft_app, tmp_path):
    from caregpt.data.openai_export_cli import main as data_export

    client = client_for(ft_app, KEY_A)
    headers = {"Authorization": f"Bearer {KEY_A}"}
    for i, topic in enumerate(TOPICS[:11]):
        question = [{"role": "user", "content": f"{topic}怎么办？"}]
        reply = client.chat.completions.create(model=BASE, messages=question, max_tokens=8, temperature=0)
        body = {"response_id": reply.id, "rating": "down", "messages": question, "answer": answer_text(reply),
                "better_answer": f"{topic}持续不缓解请及时就医。", "model": BASE}
        assert httpx.post(f"{ft_app['url']}/feedback", json=body, headers=headers, timeout=30).status_code == 200
    lone = {"response_id": "chatcmpl-lone", "rating": 1, "messages": [{"role": "user", "content": "谢谢医生"}], "answer": "不客气。"}
    assert httpx.post(f"{ft_app['url']}/feedback", json=lone, headers=headers, timeout=30).status_code == 200
    bad = httpx.post(f"{ft_app['url']}/feedback", json={**lone, "rating": 3}, headers=headers, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"

    pairs = tmp_path / "pairs.jsonl"
    assert data_export(["--format", "preference", "--feedback", str(ft_app["root"] / "state"), "--output", str(pairs)]) == 0
    assert len(pairs.read_text().splitlines()) == 11
    uploaded = client.files.create(file=pairs.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=BASE, training_file=uploaded.id, suffix="feedback",
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 3, "beta": 0.1}}})
    assert wait_for(client, job.id, ("running", "succeeded", "failed")).status == "running"

    from ray import serve

    serve.delete(APP)  # the app goes away while the Ray job trains; a new deployment must pick the job up
    deleted_at = int(time.time())
    from caregpt.finetune.state import State

    assert State(ft_app["root"] / "state").job(None, job.id)["status"] == "running"  # mid-run when the app went away
    deploy(APP, PREFIX, ft_app["settings"])
    client = client_for(ft_app, KEY_A)
    assert job.id in [j.id for j in client.fine_tuning.jobs.list()]
    done = wait_for(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert done.finished_at >= deleted_at  # its end was recorded by the restarted app
    assert done.method.type == "dpo" and done.fine_tuned_model == f"ft:{BASE}:feedback:{job.id}"
    assert any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=100))
    reply = client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "发烧怎么办？"}], max_tokens=8)
    assert reply.model == done.fine_tuned_model and reply.choices[0].message.content is not None
