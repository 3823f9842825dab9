"""The job monitor: moves jobs validating_files -> queued -> running -> succeeded | failed | cancelled.

It runs in the router replica as a background task and keeps nothing in memory: every step reads the job
from SQLite and asks Ray's job API where the run stands, so a restarted app resumes every job where it was
(a Ray job keeps training while the app restarts). A job waits in `queued` while `max_running_jobs` jobs
run or the cluster lacks the CPUs/GPUs a training worker reserves. Each job is one Ray job
(JobSubmissionClient) running ``python -m caregpt.finetune.entry`` -> `caregpt train` (sft or dpo, LoRA).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caregpt.finetune import hyperparams
from caregpt.finetune.publish import fine_tuned_name, publish_adapter
from caregpt.finetune.settings import FinetuneSettings
from caregpt.finetune.state import ACTIVE, State
from caregpt.finetune.storage import Storage
from caregpt.finetune.validation import KINDS, check_file, training_rows

logger = logging.getLogger("ray.serve").getChild("caregpt.finetune")

PROGRESS = re.compile(r"\[caregpt\] (?:\[[#.]+\] )?step (\d+)(?:/(\d+))?([^\n]*)")
ERROR_LINE = re.compile(r"(caregpt train: error: .+|^[\w.]+(?:Error|Exception): .+)", re.MULTILINE)
LOG_TAIL_BYTES = 1 << 20


@dataclass
class Serving:
    """What the app serves: jobs train LoRA on exactly this base, and publish where the catalog looks."""

    base_name: str
    model_path: str
    checkpoint_dir: list[str] | None
    template: str
    adapters_dir: Path


def job_folder(job_id: str) -> str:
    return f"jobs/{job_id}"


def progress_events(logs: str) -> list[dict[str, Any]]:
    """Step/loss records from the `[caregpt] step N/T | loss X | ...` progress lines of a run's output."""
    out = []
    for match in PROGRESS.finditer(logs):
        data: dict[str, Any] = {"step": int(match.group(1))}
        if match.group(2):
            data["total_steps"] = int(match.group(2))
        for part in match.group(3).split(" | "):
            name, _, value = part.strip().partition(" ")
            if name in ("loss", "eval_loss"):
                try:
                    data["train_loss" if name == "loss" else "valid_loss"] = float(value)
                except ValueError:
                    pass
        if "train_loss" in data:
            out.append(data)
    return out


def failure_reason(logs: str, fallback: str) -> str:
    found = ERROR_LINE.findall(logs[-LOG_TAIL_BYTES:])
    reason = found[-1].strip() if found else fallback
    return reason[:500]


def is_transient(exc: Exception) -> bool:
    """A job API failure worth retrying: the API or its agent is starting, or unreachable for a moment."""
    text = str(exc).lower()
    return isinstance(exc, (ConnectionError, TimeoutError)) or "try again" in text or any(f"status code {c}" in text for c in (500, 502, 503, 504))


def step_message(data: dict[str, Any]) -> str:
    total = f"/{data['total_steps']}" if data.get("total_steps") else ""
    text = f"Step {data['step']}{total}: training loss={data['train_loss']:.4f}"
    if "valid_loss" in data:
        text += f", validation loss={data['valid_loss']:.4f}"
    return text


class JobRunner:
    def __init__(self, settings: FinetuneSettings, state: State, storage: Storage, serving: Serving):
        self.settings, self.state, self.storage, self.serving = settings, state, storage, serving
        self._client = None

    # ---- Ray job API -----------------------------------------------------------------------------
    def client(self):
        if self._client is None:
            import ray
            from ray.job_submission import JobSubmissionClient

            address = self.settings.job_api_address or ray.get_runtime_context().gcs_address
            self._client = JobSubmissionClient(address)
        return self._client

    def free_resources(self) -> dict[str, float]:
        import ray

        return ray.available_resources()

    # ---- one pass over the active jobs -----------------------------------------------------------
    def tick(self) -> None:
        for job in self.state.jobs_in(ACTIVE):
            try:
                if job["status"] == "validating_files":
                    self.validate(job)
                elif job["ray_job_id"]:
                    self.poll(job)
            except Exception:  # noqa: BLE001 - one broken job must not stop the others
                logger.exception("fine-tuning job %s: monitor step failed", job["id"])
        queued = [j for j in self.state.jobs_in(("queued",)) if not j["ray_job_id"]]
        for job in queued:
            if not self.try_start(job):
                break  # first come, first served: later jobs wait behind the first one that cannot start
        self.stop_cancelled()

    def fail(self, job: dict[str, Any], code: str, message: str, param: str | None = None, line: int | None = None) -> None:
        error = {"code": code, "message": message, "param": param}
        if line is not None:
            error["line"] = line
        if self.state.update_job(job["id"], expect=ACTIVE, status="failed", error=error):
            self.state.add_event(job["id"], "status-failed", f"Fine-tuning job failed: {message}", level="error")

    # ---- validating_files -> queued -----------------------------------------------------------------
    def validate(self, job: dict[str, Any]) -> None:
        kind_needed = {v: k for k, v in KINDS.items()}[job["method"]["type"]]
        record = self.state.file(job["owner"], job["training_file"])
        if record is None:
            return self.fail(job, "invalid_training_file", f"training_file {job['training_file']} no longer exists", "training_file")
        if record["kind"] != kind_needed:
            return self.fail(job, "invalid_training_file",
                             f"training_file {record['id']} is a {record['kind']} file, but method {job['method']['type']} needs a {kind_needed} file",
                             "training_file", 1)
        data = self.storage.read_bytes(f"files/{record['id']}.jsonl")
        from caregpt.data.openai_export import TokenCounter

        counter = TokenCounter(self.serving.model_path)  # the model's own tokenizer: lengths are exact here
        report, _ = check_file(data, counter=counter, max_tokens=self.settings.cutoff_len, expect_kind=kind_needed)
        if not report.ok:
            return self.fail(job, "invalid_training_file", f"training_file {record['id']}: {report.message()}", "training_file", report.first_line())
        try:
            rows = list(training_rows(kind_needed, data))
        except ValueError as exc:
            line = re.match(r"line (\d+)", str(exc))
            return self.fail(job, "invalid_training_file", f"training_file {record['id']}: {exc}", "training_file", int(line.group(1)) if line else None)
        folder = job_folder(job["id"])
        body = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
        self.storage.write_bytes(f"{folder}/data/train.jsonl", body.encode())
        tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"}
        entry = {"file_name": "train.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": tags, "ranking": kind_needed == "preference"}
        self.storage.write_bytes(f"{folder}/data/dataset_info.json", json.dumps({"train": entry}).encode())
        args = hyperparams.train_args(job["method"], job["seed"], self.settings, base_model=self.serving.model_path,
                                      template=self.serving.template, dataset_dir="data", output_dir="output")
        if self.serving.checkpoint_dir:
            args["checkpoint_dir"] = ",".join(self.serving.checkpoint_dir)
        self.storage.write_bytes(f"{folder}/train.json", json.dumps(args, indent=2).encode())
        if self.state.update_job(job["id"], expect=("validating_files",), status="queued"):
            self.state.add_event(job["id"], "validated", f"Validated training file: {report.examples} examples")
            self.state.add_event(job["id"], "status-queued", "Job enqueued")

    # ---- queued -> submitted -------------------------------------------------------------------------
    def try_start(self, job: dict[str, Any]) -> bool:
        running = [j for j in self.state.jobs_in(("queued", "running")) if j["ray_job_id"]]
        if len(running) >= self.settings.max_running_jobs:
            self.state.add_event(job["id"], "wait-slot", f"Waiting: {len(running)} job(s) already running (max_running_jobs {self.settings.max_running_jobs})")
            return False
        free = self.free_resources()
        needs = {"CPU": self.settings.job_num_cpus, "GPU": self.settings.job_num_gpus}
        short = {k: v for k, v in needs.items() if v and free.get(k, 0.0) < v}
        if short:
            wanted = ", ".join(f"{v:g} {k} (free {free.get(k, 0.0):g})" for k, v in short.items())
            self.state.add_event(job["id"], "wait-resources", f"Waiting for cluster resources: a training worker needs {wanted}")
            return False
        submission = f"caregpt-{job['id']}"
        if not self.state.update_job(job["id"], expect=("queued",), ray_job_id=submission):
            return True
        uri = self.storage.uri_of(job_folder(job["id"]))
        entrypoint = f"{shlex.quote(sys.executable)} -m caregpt.finetune.entry {shlex.quote(uri)}"
        try:
            self.client().submit_job(entrypoint=entrypoint, submission_id=submission, entrypoint_num_cpus=0,
                                     metadata={"caregpt_finetune_job": job["id"]})
        except Exception as exc:  # noqa: BLE001 - the API's message says why (dashboard down, id taken, ...)
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            if "already exists" in reason:
                pass  # submitted by an earlier pass that died before recording it: it is ours
            elif is_transient(exc):
                # e.g. "No available agent to submit job, please try again later" while a node's job agent starts
                self.state.update_job(job["id"], expect=("queued",), ray_job_id=None)
                self.state.add_event(job["id"], "submit-retry", f"The Ray job API is not ready ({reason}); retrying")
                return False
            else:
                self.fail(job, "submit_failed", f"the Ray job API refused the job: {reason}")
                return True
        self.state.add_event(job["id"], "submitted", f"Submitted to the Ray cluster as job {submission}")
        return True

    # ---- running -------------------------------------------------------------------------------------
    def poll(self, job: dict[str, Any]) -> None:
        client = self.client()
        rid = job["ray_job_id"]
        try:
            info = client.get_job_info(rid)
        except Exception as exc:  # noqa: BLE001 - e.g. the cluster was replaced and forgot the job
            if is_transient(exc):
                return None  # the job API is restarting: ask again on the next pass
            if job["status"] == "queued" and self.state.update_job(job["id"], expect=("queued",), ray_job_id=None):
                # claimed but never submitted (the app stopped in between): submit it again
                self.state.add_event(job["id"], "resubmit", "The Ray job was never started; submitting it again")
                return None
            return self.fail(job, "job_lost", f"the Ray cluster no longer knows job {rid} ({type(exc).__name__})")
        status = str(getattr(info.status, "value", info.status))
        if status in ("RUNNING", "SUCCEEDED", "FAILED") and self.state.update_job(job["id"], expect=("queued",), status="running"):
            self.state.add_event(job["id"], "status-running", "Fine-tuning job started")
        if status in ("PENDING",):
            return
        logs = client.get_job_logs(rid)[-LOG_TAIL_BYTES:]
        for data in progress_events(logs):
            self.state.add_event(job["id"], f"step-{data['step']}", step_message(data), type="metrics", data=data)
        if status == "SUCCEEDED":
            self.finish(job)
        elif status == "FAILED":
            self.fail(job, "training_failed", failure_reason(logs, info.message or "the training run failed"))
        elif status == "STOPPED":
            if self.state.update_job(job["id"], expect=ACTIVE, status="cancelled"):
                self.state.add_event(job["id"], "status-cancelled", "Fine-tuning job cancelled (its Ray job was stopped)")

    def finish(self, job: dict[str, Any]) -> None:
        folder = job_folder(job["id"])
        history = []
        if self.storage.exists(f"{folder}/output/trainer_log.jsonl"):
            text = self.storage.read_bytes(f"{folder}/output/trainer_log.jsonl").decode("utf-8")
            history = [json.loads(line) for line in text.splitlines() if line.strip()]
        steps = [h for h in history if "loss" in h and "step" in h]
        for entry in steps:
            data = {"step": int(entry["step"]), "train_loss": float(entry["loss"])}
            self.state.add_event(job["id"], f"step-{data['step']}", step_message(data), type="metrics", data=data)
        results = {}
        if self.storage.exists(f"{folder}/output/all_results.json"):
            results = json.loads(self.storage.read_bytes(f"{folder}/output/all_results.json"))
        name = fine_tuned_name(self.serving.base_name, job["suffix"], job["id"])
        try:
            publish_adapter(self.storage, f"{folder}/output", self.serving.adapters_dir, name, job["owner"], job["id"])
        except Exception as exc:  # noqa: BLE001
            return self.fail(job, "publish_failed", f"the adapter could not be published: {exc}")
        last = steps[-1] if steps else {}
        step = int(results.get("step") or last.get("step") or 0)
        metrics = {"step": float(step)}
        if "loss" in last:
            metrics["train_loss"] = float(last["loss"])
        self.state.add_checkpoint(job["id"], step, metrics, name)
        tokens = results.get("tokens_seen") or results.get("train_tokens_per_epoch")
        if self.state.update_job(job["id"], expect=("running", "queued"), status="succeeded", fine_tuned_model=name,
                                 trained_tokens=int(tokens) if tokens else None):
            self.state.add_event(job["id"], "published", f"New fine-tuned model created: {name}")
            self.state.add_event(job["id"], "status-succeeded", "The job has successfully completed")

    # ---- cancellation --------------------------------------------------------------------------------
    def stop(self, job: dict[str, Any]) -> None:
        """Stop the Ray job of a cancelled job (called by the cancel route, and again by the monitor until it stops)."""
        if not job["ray_job_id"]:
            return
        try:
            self.client().stop_job(job["ray_job_id"])
            info = self.client().get_job_info(job["ray_job_id"])
            if str(getattr(info.status, "value", info.status)) in ("STOPPED", "SUCCEEDED", "FAILED"):
                self.state.update_job(job["id"], cancel_requested=2)
        except Exception:  # noqa: BLE001 - retried on the next pass
            logger.warning("could not stop Ray job %s yet", job["ray_job_id"])

    def stop_cancelled(self) -> None:
        for job in self.state.jobs_in(("cancelled",)):
            if job["cancel_requested"] == 1:
                self.stop(job)
