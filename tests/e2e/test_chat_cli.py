"""`caregpt chat` as a user runs it: in a pseudo-terminal (pexpect), piped, with a local model, with the API down.

The served-model runs talk to the live OpenAI-compatible stand-in of tests/e2e/openai_standin.py over HTTP;
what the CLI shows is compared with what the API sent, and what the API received is checked for history,
system prompt and key. The local-model run loads the session's tiny model in the CLI process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from tests.e2e.openai_standin import CITATIONS, StandinAPI, free_port

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sk-chat-cli-test-key"
CHAT = [sys.executable, "-m", "caregpt.chat"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "CAREGPT_API_KEY")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", TERM="xterm")
    return env


@pytest.fixture(scope="module")
def standin():
    api = StandinAPI(api_key=API_KEY, delay_s=0.03, words=12)
    api.start()
    yield api
    api.stop()


def _spawn(args: list[str]):
    child = pexpect.spawn(CHAT[0], CHAT[1:] + args, cwd=str(REPO), env=_env(), encoding="utf-8", timeout=90,
                          dimensions=(40, 200))
    return child


def _turn(child, standin: StandinAPI, question: str) -> str:
    """Ask in the terminal, wait for the next prompt; return what was printed for the answer."""
    before = standin.answers
    child.sendline(question)
    child.expect("Assistant: ")
    child.expect(r"\r\nUser: ")
    assert standin.answers == before + 1
    return child.before


def test_two_turn_conversation_clear_and_exit_in_a_terminal(standin):
    child = _spawn(["--api-base", standin.base_url, "--api-key", API_KEY])
    child.expect("not medical advice")
    child.expect("User: ")
    first = _turn(child, standin, "My child has a fever of 38.5, what should I do?")
    assert standin.sent[-1] in first
    assert all(c["document"] in first for c in CITATIONS)  # knowledge-base sources listed under the answer
    second = _turn(child, standin, "And if it lasts three days?")
    assert standin.sent[-1] in second
    sent = standin.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == standin.sent[-2]  # the first answer went back as history

    child.sendline("/system You are a careful paediatrician.")
    child.expect("System prompt set.")
    child.sendline("/clear")
    child.expect("History cleared.")
    child.expect("User: ")
    _turn(child, standin, "Is ibuprofen safe?")
    assert standin.requests[-1]["messages"] == [
        {"role": "system", "content": "You are a careful paediatrician."},
        {"role": "user", "content": "Is ibuprofen safe?"},
    ]
    child.sendline("/exit")
    child.expect("Bye.")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert API_KEY not in child.before


def test_ctrl_c_stops_an_answer_and_ctrl_d_leaves(standin):
    slow = StandinAPI(api_key=API_KEY, delay_s=0.3, words=40)
    slow.start()
    try:
        child = _spawn(["--api-base", slow.base_url, "--api-key", API_KEY])
        child.expect("User: ")
        child.sendline("Tell me everything about fevers.")
        child.expect("Assistant: ")
        child.expect(r"turn=1")  # some tokens have arrived
        child.sendintr()
        child.expect(r"\[answer stopped\]")
        child.expect("User: ")
        child.sendeof()
        child.expect("Bye.")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert "Traceback" not in child.before
    finally:
        slow.stop()


def test_piped_stdin_prints_only_the_answers(standin):
    before = standin.answers
    run = subprocess.run(CHAT + ["--api-base", standin.base_url], input="What is a fever?\n\nWhen to see a doctor?\n",
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**_env(), "CAREGPT_API_KEY": API_KEY})  # the key from the environment
    assert run.returncode == 0, run.stderr
    assert standin.answers == before + 2
    assert run.stdout.splitlines() == standin.sent[-2:]  # one line per answer, nothing else
    assert "\x1b" not in run.stdout and "User:" not in run.stdout
    assert [m["role"] for m in standin.requests[-1]["messages"]] == ["user", "assistant", "user"]
    assert "Traceback" not in run.stderr


def test_api_down_gives_one_clear_message():
    run = subprocess.run(CHAT + ["--api-base", f"http://127.0.0.1:{free_port()}/v1"], input="hello\n",
                         capture_output=True, text=True, cwd=REPO, timeout=120, env=_env())
    assert run.returncode == 1
    assert "Cannot reach the chat API" in run.stderr and "Traceback" not in run.stderr
    assert run.stdout == ""


def test_bad_arguments_and_help():
    from caregpt.chat.options import client_sections

    for spec in client_sections().values():
        assert all(field.description for field in spec.model_fields.values()), f"every option of {spec.__name__} needs a --help text"
    run = subprocess.run(CHAT + ["--help"], capture_output=True, text=True, cwd=REPO, timeout=60, env=_env())
    assert run.returncode == 0 and "--model_name_or_path" in run.stdout and "/clear" in run.stdout
    run = subprocess.run(CHAT, capture_output=True, text=True, cwd=REPO, timeout=60, env=_env())
    assert run.returncode == 2 and "either --api-base" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft 0.21 vs transformers 5.2x
def test_local_model_with_adapter_answers_a_question(tiny_model, tmp_path):
    # An untrained LoRA adapter (zero-initialised B: merging it leaves the base unchanged) exercises the
    # checkpoint_dir path without a training run.
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)

    run = subprocess.run(
        CHAT + ["--model_name_or_path", tiny_model, "--checkpoint_dir", str(adapter), "--template", "chatml",
                "--max_new_tokens", "12", "--temperature", "1.0", "--seed", "0"],
        input="孩子发烧怎么办？\n", capture_output=True, text=True, cwd=REPO, timeout=300, env=_env())
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Chatting with the local model" in run.stderr and "Traceback" not in run.stderr
    answer = run.stdout
    assert answer.endswith("\n") and answer.strip(), repr(answer)
