"""A minimal JSON POST for OpenAI-compatible endpoints (/v1/embeddings, /v1/chat/completions).

The standard library is enough for these two calls and keeps the `openai` SDK a client-side, optional
dependency. The API key is read from an environment variable at call time and never stored.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request


class EndpointError(RuntimeError):
    """The endpoint could not be reached or answered with an error."""


def post_json(base_url: str, route: str, payload: dict, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0) -> dict:
    """POST `payload` to `base_url` + `route` (base_url like http://host:8000/v1) and return the JSON answer."""
    if not base_url.startswith(("http://", "https://")):
        raise EndpointError(f"base_url must start with http:// or https://, got {base_url!r}")
    url = base_url.rstrip("/") + "/" + route.lstrip("/")
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(api_key_env, "") if api_key_env else ""
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        raise EndpointError(f"{url} answered HTTP {err.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise EndpointError(f"cannot reach {url}: {err}") from None
    except json.JSONDecodeError:
        raise EndpointError(f"{url} did not answer JSON") from None
