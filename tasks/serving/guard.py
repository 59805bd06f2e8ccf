"""The ASGI middleware in front of every route of the service: key, size, error shape, docs.

- API key (optional, SIXFOLD_API_KEY): without `Authorization: Bearer <key>` a request gets
  401, compared in constant time (hmac.compare_digest); /livez, /readyz, /healthz and /metrics
  stay open for probes and scrapers. An empty or unset variable turns the check off.
- Body size: a Content-Length over the limit gets 413 before a byte of the body is read; a body
  without one (chunked) is counted as it streams, and the request is cut off with 413 once it
  passes the limit, so no request is ever read whole beyond `serve.max_request_mb`.
- Error shape: every response of status >= 400 leaves as JSON `{"error": "<one line>"}`.
  BentoML 1.4 answers its own InvalidArgument errors with a JSON list, and Starlette answers
  404 and 405 in plain text; clients then need one parser for all of them.
- OpenAPI: GET /docs.json, BentoML's generated schema, gets the error responses each route
  really gives (and the bearer scheme when a key is set) instead of BentoML's generic ones.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from http import HTTPStatus
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

KEY_VARIABLE = "SIXFOLD_API_KEY"
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
DOCS_PATH = "/docs.json"
ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "what was wrong, in one line"}},
    "required": ["error"],
}
MESSAGE_CHARACTERS = 500  # of a body that was not JSON, kept as the error's text


def api_key_from_environment() -> str | None:
    """SIXFOLD_API_KEY, or None when it is unset or empty (no check)."""
    return os.environ.get(KEY_VARIABLE) or None


def upload_errors(field: str, max_files: int, max_request_mb: float) -> dict[int, str]:
    """The error responses of a route that takes image files in multipart field `field`."""
    return {
        400: "an image is empty, undecodable, too small or too large (data.min_size, "
        f"data.max_pixels), or field {field!r} holds text instead of a file",
        401: f"{KEY_VARIABLE} is set and the request has no `Authorization: Bearer <key>`",
        413: f"more than {max_files} file(s), or a body over {max_request_mb:g} MB",
        415: "the body is not multipart/form-data",
        422: f"no file in field {field!r}, or another field",
        429: "too many requests in flight (serve.max_concurrency)",
        503: "overloaded: the request would miss serve.max_latency_ms",
    }


def error_body(status: int, body: bytes) -> bytes:
    """`body` of an error response as `{"error": "..."}` (kept when it already is one)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = body.decode("utf-8", "replace").strip()[:MESSAGE_CHARACTERS]
    if isinstance(data, list) and data:
        data = data[0]  # BentoML's InvalidArgument: [{"error": "..."}]
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        details = data.get("detail")
        message = data["error"]
        if isinstance(details, list):  # BentoML's validation errors: where and what
            message += "".join(
                f"; {'.'.join(map(str, item.get('loc', ())))}: {item.get('msg', '')}"
                for item in details
                if isinstance(item, dict)
            )
    elif isinstance(data, str) and data:
        message = data
    else:
        message = _phrase(status)
    return json.dumps({"error": message}).encode()


def documented(spec: dict[str, Any], errors: Mapping[str, Mapping[int, str]], keyed: bool) -> dict:
    """BentoML's OpenAPI document with each route's real error responses (`errors`: route ->
    status -> description) and, when `keyed`, the bearer scheme on every guarded path."""
    paths = spec.get("paths", {})
    for route, statuses in errors.items():
        operation = paths.get(route, {}).get("post")
        if operation is None:
            continue
        responses = {
            code: value
            for code, value in operation.get("responses", {}).items()
            if str(code).startswith("2")
        }
        for status, description in sorted(statuses.items()):
            if status == 401 and not keyed:
                continue
            responses[str(status)] = {
                "description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        operation["responses"] = responses
    spec.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    if keyed:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        spec["security"] = [{"bearer": []}]
        for path in OPEN_PATHS & set(paths):
            for operation in paths[path].values():
                if isinstance(operation, dict):
                    operation["security"] = []
    return spec


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


async def send_error(send: Send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    start_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})


class _BodyLimit:
    """`receive` that counts body bytes; past the limit it reports a disconnect instead."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive, self.limit, self.received, self.exceeded = receive, limit, 0, False

    async def receive(self) -> Message:
        if self.exceeded:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                return {"type": "http.disconnect"}
        return message


class _ResponseShaper:
    """`send` that holds the responses `holds` picks (errors, the OpenAPI document) to rewrite
    their body, and drops everything once `muted` says the guard answers instead of the app."""

    def __init__(
        self,
        send: Send,
        holds: Callable[[int], bool],
        rewrite: Callable[[int, bytes], bytes],
        muted: Callable[[], bool],
    ) -> None:
        self._send, self._holds, self._rewrite, self._muted = send, holds, rewrite, muted
        self.forwarded = False  # a response start went out: nothing else can be sent
        self._held: Message | None = None
        self._body = bytearray()

    async def send(self, message: Message) -> None:
        if self._muted():
            return
        kind = message["type"]
        if kind == "http.response.start" and self._holds(message["status"]):
            self._held = message
            return
        if kind == "http.response.body" and self._held is not None:
            self._body += message.get("body", b"")
            if message.get("more_body", False):
                return
            start, self._held = self._held, None
            body = self._rewrite(start["status"], bytes(self._body))
            headers = [
                (name, value)
                for name, value in start.get("headers", [])
                if name.lower() not in (b"content-length", b"content-type")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            message = {"type": "http.response.body", "body": body}
            await self._forward({**start, "headers": headers})
        await self._forward(message)

    async def _forward(self, message: Message) -> None:
        self.forwarded = self.forwarded or message["type"] == "http.response.start"
        await self._send(message)


class RequestGuard:
    """The middleware (see the module docstring); added with `Service.add_asgi_middleware`."""

    def __init__(
        self,
        app: App,
        max_body_bytes: int,
        api_key: str | None = None,
        errors: Mapping[str, Mapping[int, str]] | None = None,
    ) -> None:
        self.app, self.max_body_bytes, self.errors = app, max_body_bytes, errors or {}
        self._key = api_key.encode() if api_key else None

    def authorized(self, scope: Scope) -> bool:
        if self._key is None or scope.get("path") in OPEN_PATHS:
            return True
        value = next((v for k, v in scope.get("headers", []) if k.lower() == b"authorization"), b"")
        scheme, _, token = value.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not self.authorized(scope):
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.authorized(scope):
            hint = f"send the header `Authorization: Bearer <key>` ({KEY_VARIABLE} is set)"
            challenge = [(b"www-authenticate", b'Bearer realm="sixfold"')]
            await send_error(send, 401, f"missing or wrong API key: {hint}", challenge)
            return
        if problem := self._length_problem(scope):
            await send_error(send, *problem)
            return
        limit = _BodyLimit(receive, self.max_body_bytes)
        holds, rewrite = self._rewriting(scope)
        shaper = _ResponseShaper(send, holds, rewrite, lambda: limit.exceeded)
        try:
            await self.app(scope, limit.receive, shaper.send)
        except Exception:
            if not limit.exceeded:
                raise  # a bug: the server answers 500 and logs it
        if limit.exceeded and not shaper.forwarded:
            await send_error(send, 413, self._too_large(f"more than {self.max_body_bytes}"))

    def _too_large(self, size: str) -> str:
        megabytes = self.max_body_bytes / 1_000_000
        return f"the request body is {size} bytes, over serve.max_request_mb = {megabytes:g} MB"

    def _length_problem(self, scope: Scope) -> tuple[int, str] | None:
        lengths = [v for k, v in scope.get("headers", []) if k.lower() == b"content-length"]
        if not lengths:
            return None
        if len(lengths) > 1 or not lengths[0].strip().isdigit():
            return 400, "the Content-Length header is not one whole number"
        length = int(lengths[0])
        if length > self.max_body_bytes:
            return 413, self._too_large(str(length))
        return None

    def _rewriting(
        self, scope: Scope
    ) -> tuple[Callable[[int], bool], Callable[[int, bytes], bytes]]:
        """Which responses to hold (by status) and how to rewrite their body."""
        is_docs = scope.get("path") == DOCS_PATH and scope.get("method") == "GET"
        is_head = scope.get("method") == "HEAD"  # its responses carry no body to rewrite

        def holds(status: int) -> bool:
            return not is_head and (status >= 400 or (is_docs and status == 200))

        def rewrite(status: int, body: bytes) -> bytes:
            if status >= 400:
                return error_body(status, body)
            spec = documented(json.loads(body), self.errors, self._key is not None)
            return json.dumps(spec).encode()

        return holds, rewrite
