"""Fixtures every end-to-end module may use: Serve on a free port and the shared chat app (serve_support.py)."""

from tests.e2e.serve_support import adapters_dir, chat_app, serve_http  # noqa: F401 - package-scoped fixtures
