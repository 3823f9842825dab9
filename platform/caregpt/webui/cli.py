"""`caregpt webui`: serve the web chat on this machine, for a served API or a model it loads itself.

`caregpt webui --api-base URL` talks to any OpenAI-compatible API. CareGPT's web_demo flags
(`--model_name_or_path M --checkpoint_dir A --finetuning_type lora --template T`) start a local engine in
this process instead (the same local model `caregpt chat` uses), so the page works with no API running.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import Field

from caregpt.chat.api import ChatApiError, Delta, normalize_base_url
from caregpt.config.specs import Spec

USAGE = "caregpt webui (--api-base URL | --model_name_or_path DIR [--checkpoint_dir DIR] [--template NAME]) [--key value ...]"
SUMMARY = (
    "A Gradio chat page (streaming, multi-turn, system prompt, sampling controls, retry / undo / clear, model and adapter "
    "picker, knowledge-base sources) for any OpenAI-compatible API (--api-base), or for a model loaded in this process "
    "with CareGPT's web_demo flags (--model_name_or_path --checkpoint_dir --finetuning_type lora --template)."
)
EPILOG = (
    "Examples:\n"
    "  caregpt webui --api-base http://127.0.0.1:8000/v1 --port 7860   # then open http://127.0.0.1:7860\n"
    "  caregpt webui --model_name_or_path BASE --checkpoint_dir output --finetuning_type lora --template llama2\n\n"
    "To run it inside Ray Serve next to the API, see caregpt.webui.serve_app and docs/clients.md."
)


class PageArgs(Spec):
    title: str = "CareGPT medical chat"
    """Page title."""

    host: str = "127.0.0.1"
    """Interface to listen on; 0.0.0.0 for every interface."""

    port: int = Field(default=7860, ge=0, le=65535)
    """Port to listen on."""

    share: bool = False
    """Open a public gradio.live tunnel (downloads Gradio's frpc client; off by default)."""


class LocalEngine:
    """A model loaded in this process, behind the calls the page makes to an API (list models, stream)."""

    def __init__(self, local):
        self.local = local
        self.base_url = f"local model {local.model_name} (in this process)"

    def list_models(self) -> list[str]:
        return [self.local.model_name]

    def stream(self, messages: list[dict[str, str]], **kwargs: Any) -> Iterator[Delta]:
        return self.local.stream(messages, **kwargs)


def help_text() -> str:
    from caregpt.chat.options import client_sections
    from caregpt.config.help import render_help

    titles = {"api": "Served model (any OpenAI-compatible API)", "page": "Page", "conversation": "Conversation",
              "model": "Local model", "local": "Local model (demo flags)", "generation": "Generation (page defaults)"}
    return render_help(USAGE, SUMMARY, [(titles[n], spec) for n, spec in client_sections({"page": PageArgs}).items()], EPILOG)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `caregpt webui` (also `python -m caregpt.webui`); blocks until Ctrl-C."""
    from caregpt.chat.options import CHAT_DEFAULTS, check_mode, client_sections, open_local, sampling
    from caregpt.config.loader import ConfigError, load_verb, resolve_spec_paths

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    from caregpt.webui.app import prepare_gradio_env

    prepare_gradio_env()  # say what to install (the [webui] extra) before complaining about flags
    try:
        parts, _, given = load_verb(argv, client_sections({"page": PageArgs}), verb="webui", defaults=CHAT_DEFAULTS)
        parts["model"] = resolve_spec_paths(parts["model"])
        check_mode(parts, given, "webui")
        if parts["api"].api_base:
            normalize_base_url(parts["api"].api_base)
    except (ConfigError, ChatApiError) as exc:
        print(f"usage: {USAGE}\ncaregpt webui: error: {exc}", file=sys.stderr)
        return 2
    from caregpt.webui.app import build_ui, page_options

    api, page, conversation = parts["api"], parts["page"], parts["conversation"]
    engine = None
    if not api.api_base:
        print(f"loading {parts['model'].model_name_or_path} for the page (local engine)...", file=sys.stderr, flush=True)
        try:
            engine = LocalEngine(open_local(parts))
        except ConfigError as exc:
            print(f"caregpt webui: error: {exc}", file=sys.stderr)
            return 2
    gen = sampling(parts["generation"])
    demo = build_ui(api.api_base or "", api.api_key, model=api.model, system=conversation.system, title=page.title,
                    chat=engine, concurrency=1 if engine else 16, defaults=gen)
    if page.share:
        print("caregpt webui: --share true publishes this page through gradio.live (a third-party tunnel).", file=sys.stderr)
    try:
        demo.launch(server_name=page.host, server_port=page.port, share=page.share, show_error=False,
                    enable_monitoring=False, **page_options())
    except OSError as exc:  # port taken, interface unknown
        print(f"caregpt webui: error: cannot listen on {page.host}:{page.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if engine is not None:  # its generation thread would keep the process alive after Ctrl-C
            engine.local.close()
    return 0
