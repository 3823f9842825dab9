"""The web chat in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright, no browser download).

Two live APIs: the OpenAI-compatible stand-in of tests/e2e/openai_standin.py, which streams at a known pace
and returns knowledge-base citations, for the detailed client checks (tokens arriving, sources, retry / undo /
clear, the API-down message, and what the API received: history, system prompt, settings, key); and the real
CareGPT API on Ray Serve (tiny model + two adapters, tests/e2e/serve_support.py) with the page itself deployed
as a Serve app beside it. A screenshot is kept in the pytest tmp dir and copied to $CAREGPT_TEST_ARTIFACTS
when that is set.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.openai_standin import CITATIONS, StandinAPI, free_port
from tests.e2e.serve_support import ADAPTERS, delete_soon

pytestmark = [pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
API_KEY = "sk-webui-test-key"
ANSWERS = "#caregpt-chatbot .message:not(.thought) > [data-testid=\"bot\"]"
USERS = '#caregpt-chatbot [data-testid="user"]'
NOTES = "#caregpt-chatbot .thought"


def _keep_artifact(path: Path) -> None:
    target = os.environ.get("CAREGPT_TEST_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(target) / path.name)


def _wait(predicate, timeout_s: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _wait_settled(locator, timeout_s: float = 10.0) -> None:
    """Wait until an element keeps the same on-screen box for 0.2 s (animations done), for a faithful screenshot."""
    previous = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        box = locator.bounding_box()
        if box and box["height"] > 0 and box == previous:
            return
        previous = box
        time.sleep(0.2)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium fonts-wqy-zenhei")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _launch_ui(api_base: str):
    from caregpt.webui.app import build_ui, page_options

    demo = build_ui(api_base, API_KEY)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True,
                enable_monitoring=False, **page_options())
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def standin():
    api = StandinAPI(api_key=API_KEY, delay_s=0.08, words=24)
    api.start()
    yield api
    api.stop()


@pytest.fixture()
def page(browser):
    """A fresh page that records any request leaving this machine (there must be none)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.external_requests = []
    local = ("http://127.0.0.1", "http://localhost", "data:", "blob:", "about:")
    page.on("request", lambda r: None if r.url.startswith(local) else page.external_requests.append(r.url))
    yield page
    context.close()


def _ask(page, text: str) -> None:
    page.fill("#caregpt-input textarea", text)
    page.keyboard.press("Enter")


def _answers(page) -> list[str]:
    return [t.strip() for t in page.locator(ANSWERS).all_inner_texts()]


def _watch_answer(page, standin: StandinAPI, answers_before: int, index: int) -> list[str]:
    """Poll the answer bubble at `index` until the API's reply is complete; return every text seen."""
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        texts = _answers(page)
        text = texts[index] if len(texts) > index else ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if standin.answers > answers_before and text == standin.sent[-1] and page.locator(NOTES).count() > 0:
            return seen
        time.sleep(0.03)
    raise AssertionError(f"the answer did not complete; texts seen: {seen[-3:]}")


def test_chat_streams_remembers_retries_and_clears(page, standin, tmp_path):
    demo, url = _launch_ui(standin.base_url)
    try:
        page.goto(url)
        page.wait_for_selector("#caregpt-input textarea")
        assert page.locator("#caregpt-disclaimer").is_visible()
        assert "not a diagnosis" in page.locator("#caregpt-disclaimer").inner_text()
        # the model picker is filled from /v1/models
        _wait(lambda: page.locator("#caregpt-model input").input_value() in standin.models, what="a model from /v1/models")

        page.fill("#caregpt-system textarea", "You are a careful paediatrician.")
        page.fill("#caregpt-max-tokens input[type=number]", "64")
        page.keyboard.press("Tab")
        question = "孩子发烧38.5度怎么办？ What should I watch for?"
        before = standin.answers
        _ask(page, question)
        seen = _watch_answer(page, standin, before, 0)
        # streamed: several growing intermediate states before the complete answer
        assert len(seen) >= 4, seen
        assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:])), seen
        sent = standin.requests[-1]
        assert sent["stream"] is True and sent["model"] in standin.models and sent["max_tokens"] == 64
        assert sent["messages"] == [{"role": "system", "content": "You are a careful paediatrician."}, {"role": "user", "content": question}]
        _wait_settled(page.locator(NOTES).last)  # the sources box unfolds with an animation
        notes = page.locator(NOTES).inner_text()
        assert all(c["document"] in notes for c in CITATIONS)
        shot = tmp_path / "webui_chat.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        _keep_artifact(shot)

        # second turn: the API receives the whole conversation (the sources note stays out of it)
        first_answer = _answers(page)[0]
        follow_up = "And if it lasts three days?"
        before = standin.answers
        _ask(page, follow_up)
        _watch_answer(page, standin, before, 1)
        history = standin.requests[-1]["messages"]
        assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
        assert history[2]["content"] == first_answer and history[3]["content"] == follow_up

        # retry: the last question is asked again and its answer replaced, not appended
        second_answer = _answers(page)[1]
        before = standin.answers
        page.click("#caregpt-retry")
        _watch_answer(page, standin, before, 1)
        assert standin.requests[-1]["messages"] == history
        assert _answers(page)[1] == standin.sent[-1] != second_answer
        assert page.locator(USERS).count() == 2 and len(_answers(page)) == 2

        # undo: the last turn goes away and its question returns to the box for editing
        page.click("#caregpt-undo")
        _wait(lambda: page.locator(USERS).count() == 1, what="undo")
        assert page.locator("#caregpt-input textarea").input_value() == follow_up
        assert len(_answers(page)) == 1

        # clear: an empty conversation; the next question starts a new history
        page.click("#caregpt-clear")
        _wait(lambda: page.locator(USERS).count() == 0 and len(_answers(page)) == 0, what="clear")
        before = standin.answers
        _ask(page, "Is ibuprofen safe for children?")
        _watch_answer(page, standin, before, 0)
        assert [m["role"] for m in standin.requests[-1]["messages"]] == ["system", "user"]
        assert page.external_requests == [], "the page fetched something from outside this machine"
    finally:
        demo.close()


def test_api_down_shows_a_message_and_retry_recovers(page, tmp_path):
    port = free_port()  # nothing listens here yet
    demo, url = _launch_ui(f"http://127.0.0.1:{port}/v1")
    api = None
    try:
        page.goto(url)
        page.wait_for_selector("#caregpt-input textarea")
        status = page.locator("#caregpt-status")
        _wait(lambda: "Cannot reach the chat API" in status.inner_text(), what="the API-down message after page load")
        _ask(page, "Is the API there?")
        _wait(lambda: page.locator(USERS).count() == 1, what="the question in the chat")
        _wait(lambda: "Cannot reach the chat API" in status.inner_text() and "is it running" in status.inner_text(), what="the API-down message")
        text = page.locator("body").inner_text()
        assert "Traceback" not in text and API_KEY not in text and len(_answers(page)) == 0
        page.screenshot(path=str(tmp_path / "webui_api_down.png"), full_page=True)
        _keep_artifact(tmp_path / "webui_api_down.png")

        # the API comes up: Retry answers the question that is still waiting
        api = StandinAPI(api_key=API_KEY, delay_s=0.02, words=8, port=port)
        api.start()
        page.click("#caregpt-retry")
        _wait(lambda: api.sent and _answers(page) == [api.sent[-1]], what="the answer after retry")
        assert status.inner_text().strip() == ""
    finally:
        demo.close()
        if api is not None:
            api.stop()


# Every change of the last answer's text, recorded in the page itself: a real tiny model streams faster
# than a test can poll, but each update Gradio renders is a DOM mutation.
RECORD_ANSWER_TEXTS = """() => {
  window.__answerTexts = [];
  const root = document.querySelector('#caregpt-chatbot');
  new MutationObserver(() => {
    const bubbles = root.querySelectorAll('.message:not(.thought) > [data-testid="bot"]');
    const text = bubbles.length ? bubbles[bubbles.length - 1].innerText.trim() : '';
    const seen = window.__answerTexts;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft 0.21 making the test adapters
def test_webui_as_a_serve_app_next_to_the_real_api(chat_app, page):
    """The page deployed by caregpt.webui.serve_app in the same Serve as the real API (tiny model, adapters, key)."""
    from ray import serve

    from caregpt.webui.serve_app import WebChat, WebUIArgs

    name = "caregpt-webui-test"
    # The key reaches the replica as an environment variable, named (not given) in the app's arguments.
    settings = WebUIArgs(api_base=f"{chat_app['url']}/v1", api_key_env="CAREGPT_WEBUI_TEST_KEY").model_dump()
    env = {"env_vars": {"CAREGPT_WEBUI_TEST_KEY": chat_app["key"]}}
    serve.run(WebChat.options(ray_actor_options={"num_cpus": 0.1, "runtime_env": env}).bind(settings), name=name,
              route_prefix=f"/{name}")
    try:
        page.goto(f"{chat_app['base']}/{name}/")
        page.wait_for_selector("#caregpt-input textarea", timeout=60_000)
        model_box = page.locator("#caregpt-model input")
        _wait(lambda: model_box.input_value() == chat_app["model"], what="the served model in the picker")
        # the picker offers the base model and every adapter from /v1/models
        model_box.click()
        options = page.locator("[role=listbox] [role=option]")
        listed = lambda: {t.split("\n")[-1].strip() for t in options.all_inner_texts()}  # noqa: E731 - "✓\nname" when selected
        _wait(lambda: {chat_app["model"], *ADAPTERS} <= listed(), what="the adapters")
        options.filter(has_text=ADAPTERS[1]).first.click()
        assert model_box.input_value() == ADAPTERS[1]
        page.fill("#caregpt-max-tokens input[type=number]", "32")
        page.keyboard.press("Tab")
        page.fill("#caregpt-temperature input[type=number]", "0")  # greedy: the same answer on every run
        page.keyboard.press("Tab")

        page.evaluate(RECORD_ANSWER_TEXTS)
        _ask(page, "孩子发烧39度，咳嗽，怎么办？")
        _wait(lambda: _settled_text(page), timeout_s=120, what="the answer from the real API")
        texts = page.evaluate("window.__answerTexts")
        # streamed: the page showed the answer growing before it was complete (a random tiny model may write
        # markdown, so partial renders need not be exact prefixes of the final one)
        assert len(texts) >= 2 and len(texts[0]) < len(texts[-1]), texts
        assert page.locator("#caregpt-status").inner_text().strip() == ""
        body = page.locator("body").inner_text()
        assert chat_app["key"] not in body and "Traceback" not in body
        assert page.external_requests == []
    finally:
        delete_soon(name)


def _settled_text(page) -> bool:
    """True once the last answer has not changed for 1 s (the stream has ended)."""
    first = _answers(page)
    time.sleep(1.0)
    return bool(first) and first == _answers(page)
