"""OpenAI-shaped errors for every failure path, and the two gatekeepers that run before any route.

Clients built for OpenAI (its SDK above all) read `{"error": {"message", "type", "param", "code"}}`
and the HTTP status; FastAPI's own validation errors, Starlette's 404/405 and uncaught exceptions
are all rewritten into that shape, so no response ever leaves in another one.
"""
from __future__ import annotations

import hmac
import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("tunewright.serve")

MAX_BODY_BYTES = 4 * 2**20  # chat and completion requests; uploads get their own limit
MAX_UPLOAD_BYTES = 512 * 2**20  # the OpenAI limit for one file
UPLOAD_PATHS = ("/v1/files",)
OPEN_PATHS = ("/health", "/")  # answered without an API key: load balancers probe /health; the dashboard asks for the key
OPEN_PREFIXES = ("/dashboard/",)  # the dashboard's static files (they hold no data; the API they call is guarded)


class ErrorResponse(JSONResponse):
    """JSON escaped to ASCII: an error may quote the client's text, which need not be encodable as UTF-8."""

    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


class OpenAIError(Exception):
    """An error the API reports to the client as-is."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def not_found_model(model: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found")


def _validation_param(loc) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    """422 for a body that is not JSON at all, 400 for JSON whose fields are wrong (as OpenAI does)."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = errors[0].get("ctx", {}).get("error", "") or errors[0].get("msg", "")
        return ErrorResponse(error_body(f"We could not parse the JSON body of your request. ({detail})",
                                       code="invalid_json"), status_code=422)
    first = errors[0] if errors else {}
    param = _validation_param(first.get("loc", ()))
    message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}" if param else first.get("msg", "invalid request body")
    return ErrorResponse(error_body(message, param=param, code="invalid_value"), status_code=400)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error FastAPI/Starlette can raise into the OpenAI error shape."""

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError):
        return ErrorResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
        else:
            message = str(exc.detail)
        code = {413: "request_too_large", 405: "method_not_allowed", 404: "unknown_url"}.get(exc.status_code)
        return ErrorResponse(error_body(message, code=code), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return ErrorResponse(error_body(f"The server had an error while processing your request ({type(exc).__name__}).",
                                       type="server_error"), status_code=500)


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())] + (headers or [])})
    await send({"type": "http.response.body", "body": payload})


class BodyLimitMiddleware:
    """413 for bodies over the limit: at once when Content-Length says so, else as the bytes arrive."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES, upload_limit: int = MAX_UPLOAD_BYTES):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["path"].startswith(UPLOAD_PATHS) else self.limit
        message = f"Request body too large: the limit is {limit // 2**20} MB."
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _send_json(send, 413, error_body(message, code="request_too_large"))
        received = 0

        async def counted_receive():
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    raise StarletteHTTPException(413, message)  # rendered by the handler above
            return event

        await self.app(scope, counted_receive, send)


class APIKeyMiddleware:
    """Bearer-token auth on every path but /health, compared in constant time."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization")
        if given is None:
            return await _send_json(send, 401, error_body(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", code="missing_api_key"))
        if not hmac.compare_digest(given, self.expected):
            return await _send_json(send, 401, error_body("Incorrect API key provided.", code="invalid_api_key"))
        await self.app(scope, receive, send)
