"""CareGPT's README commands, run as a new user runs them: `caregpt <verb>` in place of `python src/<script>.py`.

Everything runs from a scratch working directory with RELATIVE paths, as the README spells them (the model under
models/llama, datasets registered as mm, hm and rlhf in data/dataset_info.json, adapters in output / output-2).
Only the program name, the paths and the run length (max_samples, epochs, cutoff_len, max_new_tokens) differ
from CareGPT's commands. Relative paths must be resolved on the driver: the Ray Train workers, Ray Data model
actors and Serve replicas all run in other working directories.

Run: .venv/bin/pytest tests/e2e/test_seed_commands.py -q
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pexpect
import pytest

from tests.e2e.serve_support import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CAREGPT = str(Path(sys.executable).parent / "caregpt")
LENGTH = "--max_samples 8 --cutoff_len 128"  # the only change to the training commands besides paths

SFT_LLAMA2 = """train --stage sft --model_name_or_path models/llama --do_train --dataset mm,hm --template llama2
    --finetuning_type lora --quantization_bit 4 --lora_target q_proj,v_proj --output_dir output-2 --overwrite_cache
    --per_device_train_batch_size 4 --gradient_accumulation_steps 4 --lr_scheduler_type cosine --logging_steps 1
    --save_steps 1000 --learning_rate 5e-5 --num_train_epochs 2.0 --plot_loss --fp16 """ + LENGTH
SFT_LLAMA = """train --stage sft --model_name_or_path models/llama --do_train --dataset mm,hm --template default
    --finetuning_type lora --lora_target q_proj,v_proj --output_dir output --overwrite_cache
    --per_device_train_batch_size 4 --gradient_accumulation_steps 4 --lr_scheduler_type cosine --logging_steps 1
    --save_steps 1000 --learning_rate 5e-4 --num_train_epochs 1.0 --plot_loss --fp16 """ + LENGTH
DPO = """train --stage dpo --model_name_or_path models/llama --do_train --dataset rlhf --template llama2
    --finetuning_type lora --quantization_bit 4 --lora_target q_proj,v_proj --resume_lora_training False
    --checkpoint_dir ./output-2 --output_dir output-dpo --per_device_train_batch_size 2 --gradient_accumulation_steps 4
    --lr_scheduler_type cosine --logging_steps 1 --save_steps 1000 --learning_rate 1e-5 --num_train_epochs 1.0
    --plot_loss --fp16 """ + LENGTH
PREDICT = """train --stage sft --model_name_or_path models/llama --do_predict --dataset hm --template default
    --finetuning_type lora --checkpoint_dir output --output_dir predict_output --per_device_eval_batch_size 8
    --max_samples 6 --predict_with_generate --max_new_tokens 12"""
EVALUATE = """train --stage sft --model_name_or_path models/llama --do_eval --dataset hm --template default
    --finetuning_type lora --checkpoint_dir output --output_dir eval_output --per_device_eval_batch_size 8
    --max_samples 6 --predict_with_generate --max_new_tokens 12"""
DEMO_FLAGS = "--model_name_or_path models/llama --checkpoint_dir output --finetuning_type lora --template default"
EXPORT = "export --model_name_or_path models/llama --template default --finetuning_type lora --checkpoint_dir output --output_dir output_export"


def _env(ray_address: str | None = None) -> dict[str, str]:
    env = {**os.environ, "CAREGPT_PROGRESS": "0", "CAREGPT_DASHBOARD": "0"}
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return env


def caregpt(command: str, cwd: Path, timeout: int = 600, ray_address: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The command as typed. Without ray_address it starts its own embedded Ray, as on a laptop; with it, it
    joins that cluster, as a driver on a cluster node does (RAY_ADDRESS), whose workers run elsewhere."""
    return subprocess.run([CAREGPT, *shlex.split(command)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=_env(ray_address), **kwargs)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, tiny_model, test_data, ray_address) -> Path:
    """A fresh working directory laid out as the README assumes; the two SFT commands have run in it, joined to
    the session's Ray (its workers run in other working directories: relative paths must be resolved first)."""
    root = tmp_path_factory.mktemp("seed")
    shutil.copytree(tiny_model, root / "models" / "llama")
    data = root / "data"
    data.mkdir()
    for name in ("sft_cmtmedqa_multiturn.jsonl", "sft_toyhom_im_department.jsonl", "pref_medicalgpt_medical_reward.jsonl"):
        shutil.copy(test_data / name, data / name)
    columns = {"prompt": "instruction", "query": "input", "response": "output", "history": "history"}
    (data / "dataset_info.json").write_text(json.dumps({  # file names relative to dataset_dir, as in CareGPT's registry
        "mm": {"file_name": "sft_cmtmedqa_multiturn.jsonl", "columns": columns},
        "hm": {"file_name": "sft_toyhom_im_department.jsonl", "columns": {**columns, "history": ""}},
        "rlhf": {"file_name": "pref_medicalgpt_medical_reward.jsonl", "ranking": True, "columns": {**columns, "history": ""}},
    }))
    done = caregpt(SFT_LLAMA2, root, ray_address=ray_address)  # an embedded Ray's training: tests/e2e/test_pipeline.py
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (root / "output-2.log").write_text(done.stdout + done.stderr)
    status, shown = caregpt_at_terminal(SFT_LLAMA, root, ray_address)  # as a person types it
    assert status == 0, shown[-3000:]
    (root / "output.log").write_text(shown)
    return root


def caregpt_at_terminal(command: str, cwd: Path, ray_address: str, timeout: int = 600) -> tuple[int, str]:
    """The command in a pseudo-terminal, as typed at a shell: (exit status, everything the terminal showed)."""
    child = pexpect.spawn(CAREGPT, shlex.split(command), cwd=str(cwd), env=_env(ray_address), encoding="utf-8",
                          timeout=timeout, dimensions=(40, 200))
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before.replace("\r\n", "\n")


def test_sft_commands_train_with_relative_paths_and_say_the_real_precision(scratch):
    for out in ("output-2", "output"):
        assert (scratch / out / "adapter_model.safetensors").is_file() and (scratch / out / "training_loss.png").is_file()
        results = json.loads((scratch / out / "all_results.json").read_text())
        assert results["records_used"] == 16  # 8 from each of mm and hm
        # 16 records / (4 per device x 4 accumulated) = one step an epoch; output-2 trains two epochs
        assert results["step"] == (2 if out == "output-2" else 1), results
        log = (scratch / f"{out}.log").read_text()
        # --fp16 on a CPU-only machine: one clear line saying what is really used
        notes = [line for line in log.splitlines() if "fp16 needs a GPU" in line]
        assert len(notes) == 1 and "trains in float32" in notes[0], log[-3000:]
    # at a terminal: caregpt's own lines (progress, the fp16 note, the result); Ray's internals in a log it names
    shown = (scratch / "output.log").read_text()
    assert "[caregpt] [" in shown and "step 1/1" in shown and "training finished" in shown, shown[-3000:]
    assert "Reporting training result" not in shown and "TrainController" not in shown, shown[-3000:]
    (internals,) = (scratch / "output" / "logs").glob("caregpt-*.log")
    assert f"Ray and library logs of this run: {internals}" in shown
    assert "Reporting training result" in internals.read_text()
    config = (scratch / "output-2" / "caregpt_config.yaml").read_text()
    assert "quantization_bit: 4" in config and f"model_name_or_path: {scratch / 'models' / 'llama'}" in config


def _trains_nothing(directory: Path) -> None:
    for trained in ("adapter_model.safetensors", "model.safetensors", "trainer_log.jsonl", "all_results.json", "ray_storage"):
        assert not (directory / trained).exists(), f"{trained} in {directory}: a predict / eval run trained"


def test_do_predict_writes_predictions_and_trains_nothing(scratch, ray_address):
    done = caregpt(PREDICT, scratch, ray_address=ray_address)
    assert done.returncode == 0, done.stderr[-3000:]
    out = scratch / "predict_output"
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 6 and all({"prompt", "label", "prediction"} <= set(r) for r in rows)
    results = json.loads((out / "predict_results.json").read_text())
    assert results["predict_samples"] == 6 and results["adapters"] == [str(scratch / "output")]
    _trains_nothing(out)


def test_do_eval_writes_bleu_and_rouge_and_trains_nothing(scratch, ray_address):
    done = caregpt(EVALUATE, scratch, ray_address=ray_address)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((scratch / "eval_output" / "eval_results.json").read_text())
    for metric in ("eval_bleu-4", "eval_rouge-1", "eval_rouge-2", "eval_rouge-l"):
        assert isinstance(results[metric], float) and 0.0 <= results[metric] <= 100.0, metric
    assert results["eval_samples"] == 6
    _trains_nothing(scratch / "eval_output")


def test_do_train_false_with_nothing_to_do_is_an_error(scratch):
    done = caregpt("train --model_name_or_path models/llama --dataset hm --do_train false --output_dir nothing", scratch, timeout=120)
    assert done.returncode == 2 and "nothing else to do" in done.stderr and "Traceback" not in done.stderr


def test_dpo_after_qlora_sft_keeps_training_the_adapter(scratch, ray_address):
    done = caregpt(DPO, scratch, ray_address=ray_address)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = scratch / "output-dpo"
    results = json.loads((out / "all_results.json").read_text())
    assert results["step"] >= 1 and results["records_used"] == 8
    from safetensors.torch import load_file

    sft, dpo = load_file(scratch / "output-2" / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert sft.keys() == dpo.keys()  # the same single adapter, trained further (not merged + a new one)
    assert any(not sft[k].equal(dpo[k]) for k in sft)


def test_export_with_the_demo_flags(scratch):
    done = caregpt(EXPORT, scratch)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (scratch / "output_export" / "config.json").is_file()
    assert list((scratch / "output_export").glob("*.safetensors"))


def test_cli_demo_answers(scratch):
    done = caregpt(f"chat {DEMO_FLAGS} --max_new_tokens 8", scratch, input="头痛怎么办？\n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "no answer on stdout"


def _wait_for(proc: subprocess.Popen, log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{text!r} not seen: " + log.read_text()[-3000:]
        time.sleep(0.5)


def _stop(proc: subprocess.Popen, within_s: float = 60) -> None:
    """Ctrl+C, as a user stops a demo: the process must end by itself, promptly."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        raise AssertionError(f"still running {within_s:.0f} s after Ctrl+C") from None


def test_api_demo_and_the_readme_curl(scratch):
    port = free_port()
    log = scratch / "serve.log"
    with log.open("w") as handle:
        proc = subprocess.Popen([CAREGPT, "serve", *shlex.split(DEMO_FLAGS), "--port", str(port)], cwd=scratch,
                                stdout=handle, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        _wait_for(proc, log, "API ready", 300)
        body = json.dumps({"model": "llama", "messages": [{"role": "user", "content": "发烧三天了怎么办？"}], "max_tokens": 8})
        curl = shutil.which("curl")
        if curl:  # the README's curl, as typed
            done = subprocess.run([curl, "-s", f"http://127.0.0.1:{port}/v1/chat/completions", "-H", "Content-Type: application/json",
                                   "-d", body], capture_output=True, text=True, timeout=120)
            answer = json.loads(done.stdout)
        else:
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=body,
                                headers={"Content-Type": "application/json"}, timeout=120).json()
        assert answer["model"] == "llama" and answer["choices"][0]["message"]["content"] is not None, answer
    finally:
        _stop(proc)


def test_web_demo_starts_its_own_local_engine(scratch):
    port = free_port()
    log = scratch / "webui.log"
    with log.open("w") as handle:
        proc = subprocess.Popen([CAREGPT, "webui", *shlex.split(DEMO_FLAGS), "--port", str(port)], cwd=scratch,
                                stdout=handle, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        _wait_for(proc, log, "local engine", 120)
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
                if page.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        assert "CareGPT medical chat" in page.text
        from gradio_client import Client

        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        models, status = client.predict(None, api_name="/refresh_models")
        assert models["choices"] == [["llama", "llama"]] and status == ""  # from the local engine: no API runs anywhere
        # a question through the page's own answer function
        question = [{"role": "user", "content": [{"type": "text", "text": "头痛怎么办？"}]}]
        history, status = client.predict(question, "llama", "", 0.0, 0.9, 16, api_name="/respond")
        assert status == "" and history[-1]["role"] == "assistant" and history[-1]["content"][0]["text"], (history, status)
    finally:
        _stop(proc)
