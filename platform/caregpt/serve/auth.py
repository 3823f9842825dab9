"""API keys as a FastAPI dependency: ``Depends(require_key(router))`` on every route that needs one.

Keys travel as ``Authorization: Bearer KEY``. Every configured key is compared in constant time,
so the response time says nothing about how much of a key was right. With no key configured the
API is open (the router warns about it at start).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Request

from caregpt.serve import errors


def check_key(authorization: str, keys: list[str]) -> str | None:
    """The key presented in an Authorization header value; 401 unless it is one of `keys` (None: auth off)."""
    if not keys:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise errors.unauthorized("No API key provided: send the header 'Authorization: Bearer YOUR_KEY'.")
    matched = False
    for key in keys:  # every key compared, each in constant time
        matched |= hmac.compare_digest(token.encode("utf-8", "surrogateescape"), key.encode())
    if not matched:
        raise errors.unauthorized("Incorrect API key provided.")
    return token


def require_key(keys: list[str]) -> Callable[[Request], str | None]:
    """A FastAPI dependency returning the caller's key (None when auth is off), raising 401 otherwise."""

    def dependency(request: Request) -> str | None:
        return check_key(request.headers.get("authorization", ""), keys)

    return dependency
