"""OpenAI-style errors: one exception type, one JSON shape.

Every failure a client can see is an :class:`APIError` rendered as
``{"error": {"message", "type", "param", "code"}}`` with the matching HTTP status, so the `openai`
SDK raises its usual typed exceptions (``BadRequestError``, ``AuthenticationError``,
``NotFoundError``, ``RateLimitError``, ``InternalServerError``) and retries what is retryable.
Messages never quote the conversation: a prompt may hold patient text.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error answered to the client as is: status, message, OpenAI error type, offending param, code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def unauthorized(message: str) -> APIError:
    return APIError(401, message, type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def model_not_found(name: str, available: list[str]) -> APIError:
    shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
    return APIError(
        404,
        f"The model {name[:64]!r} does not exist or you do not have access to it. Served models: {shown} (GET /v1/models lists them).",
        param="model",
        code="model_not_found",
    )


def overloaded(retry_after_s: float, what: str = "The server is at capacity") -> APIError:
    seconds = max(1, int(round(retry_after_s)))
    return APIError(
        503,
        f"{what}; retry in {seconds} s.",
        type="server_error",
        code="server_overloaded",
        headers={"Retry-After": str(seconds)},
    )


def timeout(seconds: float) -> APIError:
    return APIError(504, f"The request did not finish within {seconds:g} s (request_timeout_s); ask for fewer tokens or retry.", type="server_error", code="timeout")


def internal(message: str = "The server had an error while processing your request.") -> APIError:
    return APIError(500, message, type="server_error", code="internal_error")


def from_validation_errors(errors: list[dict[str, Any]]) -> APIError:
    """The first pydantic error as an OpenAI 400, with `param` in OpenAI's dotted form (messages.0.content)."""
    if not errors:
        return bad_request("Invalid request body.")
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
    # pydantic adds the union member name to the path ("str", "list[...]"); it means nothing to a client
    loc = [p for p in loc if not (p.startswith(("list[", "function-", "tagged-union[")) or p in ("str", "int", "float"))]
    param = ".".join(loc) or None
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    kind = err.get("type", "")
    if kind == "missing":
        return bad_request(f"Missing required parameter: {param!r}.", param, "missing_required_parameter")
    if kind == "json_invalid":
        return bad_request("The request body is not valid JSON.", None, "invalid_json")
    where = f"Invalid value for {param!r}: " if param else ""
    return bad_request(f"{where}{msg}.".replace("..", "."), param, "invalid_type" if kind.endswith(("_type", "_parsing")) else "invalid_value")
