"""The Gradio web chat (`caregpt webui`), also deployable as a Ray Serve app next to the API.

- :func:`build_ui` (``caregpt.webui.app``): the page, for any OpenAI-compatible base URL and key.
- :func:`main` (``caregpt.webui.cli``): ``caregpt webui --api-base URL [--api-key KEY] [--host --port --share]``.
- ``caregpt.webui.serve_app``: the Ray Serve builder (``serve run caregpt.webui.serve_app:build_app api_base=URL``).

gradio itself is imported only when a page is built, so importing this package stays cheap.
"""

from caregpt.webui.app import build_ui
from caregpt.webui.cli import main

__all__ = ["build_ui", "main"]
