"""The web chat as a Ray Serve application, deployed next to the chat API.

    serve run caregpt.webui.serve_app:build_app api_base=http://127.0.0.1:8000/v1 route_prefix=/webui

or as one more application in a Serve config (`serve deploy`, RayService)::

    applications:
      - name: webui
        route_prefix: /webui
        import_path: caregpt.webui.serve_app:build_app
        args:
          api_base: http://127.0.0.1:8000/v1   # the API app through the local Serve proxy
          api_key_env: CAREGPT_API_KEY         # the NAME of the variable holding the key on the replica

The key itself never goes into the config (configs show in the dashboard and `serve status`): the replica
reads it from its environment. The page runs in one replica on purpose: Gradio keeps each browser
session's queue and stream state in process memory, so a second replica would receive half of a
session's requests. One replica is plenty, since generation happens in the API's replicas.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict
from ray import serve

from caregpt.chat.api import normalize_base_url

# Every open page holds a streaming connection to the replica; Serve's small default would queue users.
MAX_ONGOING_REQUESTS = 256


class WebUIArgs(BaseModel):
    """Arguments of :func:`build_app` (Serve config `args`)."""

    model_config = ConfigDict(extra="forbid")

    api_base: str = "http://127.0.0.1:8000/v1"
    """Base URL of the OpenAI-compatible API, as the replica reaches it."""

    api_key_env: str | None = None
    """Name of the environment variable that holds the API key on the replica (default: CAREGPT_API_KEY, then OPENAI_API_KEY)."""

    model: str | None = None
    """Model / adapter selected when the page opens (default: the first of /v1/models)."""

    system: str | None = None
    """Initial system prompt."""

    title: str = "CareGPT medical chat"
    """Page title."""


@serve.deployment(name="WebChat", num_replicas=1, max_ongoing_requests=MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class WebChat:
    """A Serve replica whose HTTP app is the Gradio page, built inside the replica (gradio state is not picklable)."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = WebUIArgs(**settings)

    def __serve_build_asgi_app__(self):
        from caregpt.webui.app import build_ui, page_options, prepare_gradio_env

        prepare_gradio_env()
        import gradio as gr
        from fastapi import FastAPI

        s = self.settings
        api_key = os.environ.get(s.api_key_env) if s.api_key_env else None
        demo = build_ui(s.api_base, api_key, model=s.model, system=s.system, title=s.title)
        # Mounted at "/" of this app; Serve's route prefix (e.g. /webui) reaches Gradio as the ASGI
        # root_path, which Gradio uses to build its asset and API URLs.
        return gr.mount_gradio_app(FastAPI(), demo, path="/", enable_monitoring=False, **page_options())


def build_app(args: dict[str, Any] | None = None):
    """Serve application builder (`import_path: caregpt.webui.serve_app:build_app`)."""
    settings = WebUIArgs(**(args or {}))
    normalize_base_url(settings.api_base)  # a malformed URL fails at deploy time, not on the first question
    return WebChat.bind(settings.model_dump())
