"""The gateway's error hierarchy, mapped to HTTP in exactly one place (``error_response``).

    HearthError                 status, OpenAI error type, code, param
    ├── InvalidRequest          400  invalid_request_error
    ├── Unauthorized            401  authentication_error
    ├── Forbidden               403  a web page's request (Host or Origin; gateway/origins.py)
    ├── NotFound                404  (unknown path)
    │   └── ModelNotFound       404  model_not_found
    ├── MethodNotAllowed        405
    ├── PayloadTooLarge         413
    ├── UnsupportedMediaType    415
    ├── QueueFull               429  (Retry-After)
    ├── Unavailable             503  model not ready in time, failed model, shutting down
    └── WorkerFailed            502  the worker died or failed mid-request

Before the first byte of a response an error is a JSON body; after it, an SSE error event.
The body's format follows the path: Anthropic's ``{"type": "error", "error": {"type", "message"}}``
on ``/v1/messages*`` (its ``type`` from the status, ``ANTHROPIC_TYPES``), Ollama's
``{"error": "message"}`` on ``/api/*``, OpenAI's elsewhere.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from starlette.responses import Response

from shared.protocol import ERROR_BAD_REQUEST, ERROR_CONTEXT_LENGTH, ERROR_NOT_READY


class HearthError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": ANTHROPIC_TYPES.get(self.status, "api_error"), "message": self.message},
        }

    def headers(self) -> dict[str, str]:
        return {}


# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def is_anthropic(path: str) -> bool:
    """Paths of the Anthropic Messages API, whose errors take Anthropic's format."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def is_ollama(path: str) -> bool:
    """Paths of Ollama's native API, whose errors take Ollama's format."""
    return path.startswith("/api/")


def request_id() -> str:
    """An id for Anthropic's ``request-id`` header (clients log it with errors)."""
    return f"req_{uuid.uuid4().hex}"


class InvalidRequest(HearthError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(HearthError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(HearthError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class NotFound(HearthError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(HearthError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(HearthError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(HearthError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class QueueFull(HearthError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class Unavailable(HearthError):
    status = 503
    type = "server_error"
    code = "model_not_ready"


class WorkerFailed(HearthError):
    status = 502
    type = "server_error"
    code = "worker_failed"


def from_worker(code: str, message: str, param: str | None = None) -> HearthError:
    """The gateway-side error for a worker's ``error`` message; ``param`` names the parameter at
    fault of a client error (the request's ``messages`` or ``prompt`` when the worker says none)."""
    if code in (ERROR_CONTEXT_LENGTH, ERROR_BAD_REQUEST):
        return InvalidRequest(message, param=param, code=code)
    if code == ERROR_NOT_READY:
        return Unavailable(message)
    return WorkerFailed(message, code=code)


def error_response(err: HearthError, path: str = "") -> Response:
    """The one mapping of an error to HTTP; ``path`` picks the API's error format."""
    if is_anthropic(path):
        headers = {**err.headers(), "request-id": request_id()}
        return Response(
            orjson.dumps(err.anthropic_body()), status_code=err.status, media_type="application/json", headers=headers
        )
    body = {"error": err.message} if is_ollama(path) else err.body()
    return Response(orjson.dumps(body), status_code=err.status, media_type="application/json", headers=err.headers())
