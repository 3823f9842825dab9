"""The fine-tuning service's logic without Ray or HTTP: file checks, the hyperparameter mapping, state and
tenancy, feedback pairing and export, log parsing. The HTTP/Ray path is tests/e2e/test_finetune_service.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caregpt.finetune import hyperparams
from caregpt.finetune.feedback import FeedbackError, deidentify_feedback, parse_feedback, preference_pairs
from caregpt.finetune.publish import fine_tuned_name
from caregpt.finetune.runner import failure_reason, progress_events
from caregpt.finetune.settings import FinetuneSettings
from caregpt.finetune.state import ANONYMOUS, State, owner_of
from caregpt.finetune.storage import Storage
from caregpt.finetune.tenancy import CURRENT_OWNER, bearer_key, visible, write_owner
from caregpt.finetune.validation import check_file, training_rows


def chat_line(i: int) -> dict:
    return {"messages": [{"role": "system", "content": "你是医生。"}, {"role": "user", "content": f"问题{i}：发烧怎么办？"},
                         {"role": "assistant", "content": f"回答{i}：多喝水，体温超过39度请就医。"}]}


def pref_line(i: int) -> dict:
    return {"input": {"messages": [{"role": "user", "content": f"问题{i}：头痛怎么办？"}]},
            "preferred_output": [{"role": "assistant", "content": "休息，持续头痛请就医。"}],
            "non_preferred_output": [{"role": "assistant", "content": "不用管。"}]}


def jsonl(rows) -> bytes:
    return ("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n").encode()


# ---- uploads ----------------------------------------------------------------------------------------
def test_a_valid_chat_file_is_accepted_and_kept_byte_for_byte():
    data = jsonl(chat_line(i) for i in range(12))
    report, stored = check_file(data)
    assert report.ok and report.kind == "chat" and report.examples == 12
    assert [json.loads(x) for x in stored.splitlines()] == [json.loads(x) for x in data.splitlines()]


def test_a_bad_role_is_reported_with_its_line():
    rows = [chat_line(i) for i in range(12)]
    rows[6]["messages"][1]["role"] = "doctor"
    report, _ = check_file(jsonl(rows))
    assert not report.ok and report.first_line() == 7
    assert "line 7" in report.message() and "role 'doctor'" in report.message()


def test_broken_json_and_mixed_formats_name_their_lines():
    rows = [chat_line(i) for i in range(12)]
    report, _ = check_file(jsonl([*rows[:3], "{not json", *rows[3:], pref_line(0)]))
    assert [line for line, _ in report.problems] == [4, 14]
    assert "not valid JSON" in report.problems[0][1] and "one file holds one format" in report.problems[1][1]


def test_too_few_examples_is_a_file_error():
    report, _ = check_file(jsonl(chat_line(i) for i in range(3)))
    assert not report.ok and "at least 10" in report.message()


def test_preference_files_are_checked():
    rows = [pref_line(i) for i in range(11)]
    assert check_file(jsonl(rows))[0].kind == "preference"
    rows[2]["non_preferred_output"] = rows[2]["preferred_output"]
    rows[4]["input"]["messages"].append({"role": "assistant", "content": "x"})
    report, _ = check_file(jsonl(rows))
    assert [line for line, _ in report.problems] == [3, 5]
    assert "identical" in report.problems[0][1] and "end with user" in report.problems[1][1]


def test_deidentify_on_upload_masks_names_and_phones_consistently():
    rows = [chat_line(i) for i in range(10)]
    rows[0]["messages"][1]["content"] = "患者张三，电话13812345678，发烧三天。"
    rows[0]["messages"][2]["content"] = "张三您好，请尽快就医。"
    report, stored = check_file(jsonl(rows), deidentify=True)
    first = json.loads(stored.splitlines()[0])
    text = json.dumps(first, ensure_ascii=False)
    assert "张三" not in text and "13812345678" not in text
    assert first["messages"][2]["content"].startswith("[姓名1]") and report.masked["PHONE"] == 1


def test_training_rows_convert_to_caregpt_formats_and_refuse_weight_zero():
    chat = list(training_rows("chat", jsonl([chat_line(0)])))
    assert chat[0]["messages"][-1]["role"] == "assistant"
    pref = list(training_rows("preference", jsonl([pref_line(0)])))
    assert pref[0] == {"messages": [{"role": "user", "content": "问题0：头痛怎么办？"}], "chosen": "休息，持续头痛请就医。", "rejected": "不用管。"}
    weighted = chat_line(1)
    weighted["messages"][2]["weight"] = 0
    with pytest.raises(ValueError, match="line 2"):
        list(training_rows("chat", jsonl([chat_line(0), weighted])))


# ---- the hyperparameter mapping -----------------------------------------------------------------------
SETTINGS = FinetuneSettings(storage_root="/tmp/unused-ft-root")


def test_auto_and_explicit_hyperparameters_map_to_train_keys():
    plan = hyperparams.plan_job({"model": "m", "training_file": "f", "suffix": "cardio", "seed": 7,
                                 "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5}}, SETTINGS)
    assert plan.method == {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}}}
    args = hyperparams.train_args(plan.method, plan.seed, SETTINGS, base_model="/m", template="auto", dataset_dir="d", output_dir="o")
    assert args["stage"] == "sft" and args["finetuning_type"] == "lora" and args["num_train_epochs"] == 2.0
    assert args["per_device_train_batch_size"] == 4 and args["learning_rate"] == pytest.approx(1e-4) and args["seed"] == 7


def test_dpo_method_maps_beta_and_stage():
    plan = hyperparams.plan_job({"model": "m", "training_file": "f", "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}}}, SETTINGS)
    args = hyperparams.train_args(plan.method, plan.seed, SETTINGS, base_model="/m", template="auto", dataset_dir="d", output_dir="o")
    assert args["stage"] == "dpo" and args["dpo_beta"] == 0.2 and 0 <= plan.seed < 2**31


@pytest.mark.parametrize("body, param", [
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"n_epochs": 1.5}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"beta": 0.1}}, "hyperparameters.beta"),
    ({"hyperparameters": {"n_epochs": 1}, "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}}, "hyperparameters"),
    ({"method": {"type": "reinforcement"}}, "method.type"),
    ({"suffix": "has space"}, "suffix"),
    ({"validation_file": "file-1"}, "validation_file"),
    ({"integrations": [{"type": "wandb"}]}, "integrations"),
    ({"learning_rate": 0.1}, "learning_rate"),
])
def test_requests_this_trainer_cannot_honour_are_refused_with_the_field(body, param):
    with pytest.raises(hyperparams.RequestError) as caught:
        hyperparams.plan_job({"model": "m", "training_file": "f", **body}, SETTINGS)
    assert caught.value.param == param


# ---- state and tenancy ---------------------------------------------------------------------------------
def _job(state: State, owner: str, job_id: str, status: str = "validating_files") -> dict:
    return state.add_job({"id": job_id, "owner": owner, "created_at": 1, "model": "m", "training_file": "file-1", "validation_file": None,
                          "suffix": None, "seed": 1, "method": {"type": "supervised", "supervised": {"hyperparameters": {}}}, "status": status})


def test_state_is_per_owner_paginated_and_survives_reopening(tmp_path):
    state = State(tmp_path)
    a, b = owner_of("key-a"), owner_of("key-b")
    assert a != b and "key-a" not in a and owner_of(None) == ANONYMOUS
    for i in range(3):
        _job(state, a, f"ftjob-{i}")
    assert state.job(b, "ftjob-0") is None and state.jobs(b, 10) == []
    reopened = State(tmp_path)
    page = reopened.jobs(a, 2)
    assert [j["id"] for j in page] == ["ftjob-2", "ftjob-1"]
    assert [j["id"] for j in reopened.jobs(a, 2, after="ftjob-1")] == ["ftjob-0"]


def test_a_cancel_is_never_overwritten_by_a_late_status(tmp_path):
    state = State(tmp_path)
    _job(state, "o", "ftjob-x", "running")
    assert state.update_job("ftjob-x", expect=("running",), status="cancelled")
    assert not state.update_job("ftjob-x", expect=("running", "queued"), status="succeeded")
    job = state.job("o", "ftjob-x")
    assert job["status"] == "cancelled" and job["finished_at"]


def test_events_are_recorded_once_per_key_newest_first(tmp_path):
    state = State(tmp_path)
    assert state.add_event("j", "step-1", "Step 1: training loss=2.0", type="metrics", data={"step": 1, "train_loss": 2.0})
    assert not state.add_event("j", "step-1", "again")
    state.add_event("j", "step-2", "Step 2")
    events = state.events("j", 10)
    assert [e["message"] for e in events] == ["Step 2", "Step 1: training loss=2.0"] and events[1]["data"]["train_loss"] == 2.0


def test_one_monitor_holds_the_lease(tmp_path):
    state = State(tmp_path)
    assert state.take_lease("a", 30) and state.take_lease("a", 30)
    assert not state.take_lease("b", 30)
    assert state.take_lease("b", -1) is False  # a lease in force is not taken, whatever the newcomer's ttl
    state.take_lease("a", -1)  # a gives it up (expired)
    assert state.take_lease("b", 30)


def test_owned_adapters_are_visible_to_their_owner_only(tmp_path):
    folder = tmp_path / "ft:tiny:cardio:ftjob-1"
    folder.mkdir()
    write_owner(folder, owner_of("key-a"), "ftjob-1")
    plain = tmp_path / "cardio"
    plain.mkdir()
    token = CURRENT_OWNER.set(owner_of("key-a"))
    try:
        assert visible(folder) and visible(plain)
    finally:
        CURRENT_OWNER.reset(token)
    token = CURRENT_OWNER.set(owner_of("key-b"))
    try:
        assert not visible(folder) and visible(plain)
    finally:
        CURRENT_OWNER.reset(token)
    assert not visible(folder)  # outside any request: hidden
    assert bearer_key(authorization="Bearer sk-1") == "sk-1" and bearer_key(authorization="Basic x") is None


def test_fine_tuned_names_are_openai_shaped_and_servable():
    from caregpt.serve.catalog import ADAPTER_NAME

    name = fine_tuned_name("org/tiny model", "cardio", "ftjob-abc")
    assert name == "ft:org-tiny-model:cardio:ftjob-abc" and ADAPTER_NAME.match(name)


def test_storage_round_trip(tmp_path):
    storage = Storage(str(tmp_path / "root"))
    storage.write_bytes("files/file-1.jsonl", b"{}\n")
    assert storage.exists("files/file-1.jsonl") and storage.read_bytes("files/file-1.jsonl") == b"{}\n"
    assert not storage.exists("files/file-1.jsonl.partial")
    storage.delete("files/file-1.jsonl")
    assert not storage.exists("files/file-1.jsonl")


# ---- feedback --------------------------------------------------------------------------------------------
CONVO = [{"role": "user", "content": "孩子发烧怎么办？"}]


def rating(rid: str, value, answer: str, better: str | None = None, messages=CONVO) -> dict:
    return parse_feedback({"response_id": rid, "rating": value, "answer": answer, "better_answer": better, "messages": messages})


def test_feedback_is_validated_with_the_field_named():
    with pytest.raises(FeedbackError) as caught:
        parse_feedback({"response_id": "r", "rating": 5, "answer": "a", "messages": CONVO})
    assert caught.value.param == "rating"
    with pytest.raises(FeedbackError) as caught:
        parse_feedback({"response_id": "r", "rating": 1, "answer": "a", "messages": [*CONVO, {"role": "assistant", "content": "x"}]})
    assert caught.value.param == "messages"
    with pytest.raises(FeedbackError):
        parse_feedback({"response_id": "r", "rating": True, "answer": "a", "messages": CONVO})


def test_chosen_is_suggested_or_up_rated_rejected_is_down_rated():
    rows = [rating("r1", "down", "不用管。", better="多喝水，超过39度请就医。"),
            rating("r2", "up", "物理降温并观察。"),
            rating("r3", -1, "吃点抗生素。"),
            rating("r4", 1, "好好休息。", messages=[{"role": "user", "content": "头痛"}])]
    pairs, report = preference_pairs(rows)
    got = {(p["preferred_output"][0]["content"], p["non_preferred_output"][0]["content"]) for p in pairs}
    assert got == {("多喝水，超过39度请就医。", "不用管。"), ("物理降温并观察。", "不用管。"),
                   ("多喝水，超过39度请就医。", "吃点抗生素。"), ("物理降温并观察。", "吃点抗生素。")}
    assert report.pairs == 4 and report.unpaired == 1  # the lone up-rating of another conversation
    report_text = report.format()
    assert "1 up-rated answers with no down-rated answer" in report_text
    assert check_file(jsonl(pairs * 3))[0].ok  # the export is a valid preference upload


def test_feedback_deidentification_masks_every_text():
    row = deidentify_feedback(rating("r", -1, "张三您好", better="张三，请拨打13812345678", messages=[{"role": "user", "content": "患者张三发烧"}]))
    text = json.dumps(row, ensure_ascii=False)
    assert "张三" not in text and "13812345678" not in text


def test_export_cli_writes_pairs_per_key(tmp_path, monkeypatch, capsys):
    from caregpt.data.openai_export_cli import main

    state = State(tmp_path / "state")
    for i, (key, value, answer) in enumerate([("key-a", -1, "坏回答"), ("key-a", 1, "好回答"), ("key-b", -1, "另一个坏回答")]):
        state.add_feedback({**rating(f"r{i}", value, answer), "id": f"fb{i}", "owner": owner_of(key), "created_at": i})
    out = tmp_path / "pairs.jsonl"
    assert main(["--format", "preference", "--feedback", str(tmp_path / "state"), "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2  # both bad answers pair with the one good one
    monkeypatch.setenv("KEY_B", "key-b")
    assert main(["--format", "preference", "--feedback", str(tmp_path / "state"), "--output", str(out), "--api_key_env", "KEY_B"]) == 1
    assert out.read_text() == "" and "0 preference pairs from 1 ratings" in capsys.readouterr().out
    assert main(["--format", "preference", "--feedback", str(tmp_path / "nowhere"), "--output", str(out)]) == 2


# ---- following a run ---------------------------------------------------------------------------------------
def test_progress_lines_become_step_events():
    logs = ("(RayTrainWorker pid=1) [caregpt] [##........] step 1/4 | loss 2.5000 | lr 2.00e-04 | 120 tok/s | eta 0m03s\n"
            "(RayTrainWorker pid=1) [caregpt] step 2/4 | loss 2.2500 | eval_loss 2.4000\n"
            "(RayTrainWorker pid=1) [caregpt] step 3/4 | lr 1.00e-04\n")
    assert progress_events(logs) == [{"step": 1, "total_steps": 4, "train_loss": 2.5},
                                     {"step": 2, "total_steps": 4, "train_loss": 2.25, "valid_loss": 2.4}]


def test_the_failure_reason_is_the_last_error_line():
    logs = "Traceback (most recent call last):\n  File x\nValueError: first\nmore\nRuntimeError: training diverged\n"
    assert failure_reason(logs, "fallback") == "RuntimeError: training diverged"
    assert failure_reason("caregpt train: error: dataset 'x' is empty\n", "f") == "caregpt train: error: dataset 'x' is empty"
    assert failure_reason("nothing useful", "fallback") == "fallback"
    ray_failure = "  File x\nray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n\tclass_name: TrainController\n"
    assert failure_reason(ray_failure, "f") == "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task."


def test_settings_need_a_local_state_dir_for_uri_roots(tmp_path):
    with pytest.raises(ValueError, match="state_dir"):
        FinetuneSettings(storage_root="s3://bucket/ft")
    settings = FinetuneSettings(storage_root=str(tmp_path / "ft"))
    assert settings.state_path == (tmp_path / "ft" / "state").resolve() and Path(settings.storage_root).is_absolute()


def test_serve_settings_need_an_adapter_root_for_finetuning(tmp_path):
    from caregpt.config.loader import ConfigError
    from caregpt.serve.config import build_serve_config

    with pytest.raises(ConfigError, match="adapters_dir"):
        build_serve_config({"model_name_or_path": "m", "finetune": str(tmp_path)})
    config = build_serve_config({"model_name_or_path": "m", "adapters_dir": str(tmp_path), "finetune": '{"storage_root": "%s", "deidentify": true}' % tmp_path})
    assert config.finetune.deidentify and config.public()["finetune"]["storage_root"] == str(tmp_path.resolve())


def test_job_api_failures_that_pass_are_retried_others_fail_the_job():
    from caregpt.finetune.runner import is_transient

    assert is_transient(RuntimeError("Request failed with status code 500: No available agent to submit job, please try again later."))
    assert is_transient(ConnectionError("refused"))
    assert not is_transient(RuntimeError("Request failed with status code 400: bad runtime_env"))


# ---- the web chat's rating buttons ------------------------------------------------------------------------
def test_web_chat_ratings_send_the_answer_id_and_the_conversation_it_answered():
    from caregpt.chat.api import ChatApiError
    from caregpt.webui.app import feedback_payload, rated_answer, send_feedback

    history = [{"role": "user", "content": "发烧怎么办？"},
               {"role": "assistant", "content": "多喝水。", "metadata": {"id": "chatcmpl-1"}},
               {"role": "assistant", "content": "1. 指南", "metadata": {"title": "Sources"}},
               {"role": "user", "content": "还要注意什么？"},
               {"role": "assistant", "content": "超过39度就医。", "metadata": {"id": "chatcmpl-2"}}]
    assert rated_answer(history) == 4 and rated_answer(history, 1) == 1 and rated_answer(history, 2) is None
    payload = feedback_payload(history, 4, "你是医生。", "tiny", -1, "  体温超过39度或持续三天请就医。 ")
    assert payload == {"response_id": "chatcmpl-2", "rating": -1, "model": "tiny", "answer": "超过39度就医。",
                       "better_answer": "体温超过39度或持续三天请就医。",
                       "messages": [{"role": "system", "content": "你是医生。"}, {"role": "user", "content": "发烧怎么办？"},
                                    {"role": "assistant", "content": "多喝水。"}, {"role": "user", "content": "还要注意什么？"}]}
    # the payload is what the service accepts
    assert parse_feedback(payload)["better_answer"] == "体温超过39度或持续三天请就医。"

    class Recorder:
        def __init__(self, fail: bool = False):
            self.sent, self.fail = [], fail

        def feedback(self, body):
            if self.fail:
                raise ChatApiError("The chat API has no such endpoint (404)")
            self.sent.append(body)

    chat = Recorder()
    assert "helpful" in send_feedback(chat, history, None, "tiny", 1, True) and chat.sent[-1]["rating"] == 1
    assert "better answer" in send_feedback(chat, history, None, "tiny", None, True, "更好的回答") and chat.sent[-1]["rating"] == -1
    assert "no answer" in send_feedback(chat, history[:1], None, "tiny", None, False)
    assert "404" in send_feedback(Recorder(fail=True), history, None, "tiny", 1, False)


# ---- queueing ---------------------------------------------------------------------------------------------
def test_jobs_wait_in_queued_while_the_cluster_is_busy_or_the_slots_are_taken(tmp_path):
    from caregpt.finetune.runner import JobRunner, Serving

    class BusyCluster(JobRunner):
        """The scheduling decision alone: what the cluster reports free is given, nothing is submitted."""

        free = {"CPU": 0.5}

        def free_resources(self):
            return self.free

        def client(self):
            raise AssertionError("a job that must wait was submitted")

    settings = FinetuneSettings(storage_root=str(tmp_path / "root"), job_num_cpus=2, max_running_jobs=1)
    state = State(tmp_path / "state")
    runner = BusyCluster(settings, state, Storage(settings.storage_root), Serving("tiny", "/m", None, "auto", tmp_path))
    _job(state, "o", "ftjob-q", "queued")
    assert runner.try_start(state.job(None, "ftjob-q")) is False
    assert state.job(None, "ftjob-q")["ray_job_id"] is None
    assert "needs 2 CPU (free 0.5)" in state.events("ftjob-q", 5)[0]["message"]
    _job(state, "o", "ftjob-r", "running")
    state.update_job("ftjob-r", ray_job_id="caregpt-ftjob-r")
    BusyCluster.free = {"CPU": 8}
    assert runner.try_start(state.job(None, "ftjob-q")) is False
    assert "1 job(s) already running" in state.events("ftjob-q", 5)[0]["message"]


def test_publishing_copies_only_the_adapter_and_marks_its_owner(tmp_path):
    from caregpt.finetune.publish import publish_adapter
    from caregpt.finetune.tenancy import owner_of_adapter

    storage = Storage(str(tmp_path / "root"))
    for name, data in (("adapter_config.json", b"{}"), ("adapter_model.safetensors", b"w"), ("tokenizer.json", b"{}"),
                       ("caregpt_config.yaml", b"template: auto\n"), ("trainer_log.jsonl", b"{}\n"), ("ray_storage/ckpt/x.bin", b"c")):
        storage.write_bytes(f"jobs/ftjob-1/output/{name}", data)
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    target = publish_adapter(storage, "jobs/ftjob-1/output", adapters, "ft:tiny:cardio:ftjob-1", owner_of("key-a"), "ftjob-1")
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "caregpt_config.yaml",
                                                         "caregpt_owner.json", "tokenizer.json"]
    assert owner_of_adapter(target) == owner_of("key-a") and [p.name for p in adapters.iterdir()] == [target.name]
    assert publish_adapter(storage, "jobs/ftjob-1/output", adapters, target.name, owner_of("key-a"), "ftjob-1") == target
    storage.delete("jobs/ftjob-1/output/adapter_config.json")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        publish_adapter(storage, "jobs/ftjob-1/output", adapters, "ft:tiny:x:ftjob-1", "o", "ftjob-1")
    assert not (adapters / "ft:tiny:x:ftjob-1").exists() and not list(adapters.glob(".staging-*"))


def test_a_job_folder_behind_a_uri_is_staged_locally_and_its_outputs_copied_back(tmp_path):
    # file:// goes through the same pyarrow code as s3:// or gs://, so the remote path of the Ray job entry is exercised
    from caregpt.finetune.storage import fetch, push_dir

    storage = Storage(f"file://{tmp_path / 'root'}")
    storage.write_bytes("jobs/ftjob-1/train.json", b"{}")
    storage.write_bytes("jobs/ftjob-1/data/train.jsonl", b"{}\n")
    uri = f"file://{tmp_path / 'root'}/jobs/ftjob-1"
    local = fetch(uri, tmp_path / "scratch" / "job")
    assert (local / "train.json").read_bytes() == b"{}" and (local / "data" / "train.jsonl").is_file()
    (local / "output").mkdir()
    (local / "output" / "adapter_config.json").write_text("{}")
    push_dir(local / "output", uri + "/output")
    assert storage.read_bytes("jobs/ftjob-1/output/adapter_config.json") == b"{}"
