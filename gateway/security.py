"""The gateway's door: Host/Origin checks, bearer tokens, body size limits.

A pure ASGI middleware (not Starlette's ``BaseHTTPMiddleware``, which buffers
and slows every request) in front of the whole app. The rules follow the MCP
HTTP server's (:mod:`skillscale.adapters.mcp`): on loopback the API is open
but only to requests whose ``Host`` names this machine and whose ``Origin``,
when a browser sends one, is this gateway (DNS rebinding); bound anywhere
else it needs a token, which every API request must carry as
``Authorization: Bearer``. The console's static files and the health probes
carry no secret and are served without a token.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillscale.core.errors import ErrorCode

OPEN_PATHS = ("/", "/healthz", "/readyz", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)


def is_loopback(host: str) -> bool:
    """True when ``host`` (an interface to bind) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def check_exposure(host: str, token: str | None) -> None:
    """Refuse (``ValueError``) to serve beyond loopback without a bearer token."""
    if not token and not is_loopback(host):
        raise ValueError(
            f"--host {host} is reachable beyond this machine: give a bearer token "
            "(--token or SKILLSCALE_GATEWAY_TOKEN), or bind 127.0.0.1"
        )


def allowed_hosts(host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """``Host`` values a loopback gateway accepts: its address and the loopback names."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    if host not in names and host != "::1":
        names.append(f"[{host}]" if ":" in host else host)
    hosts = [f"{name}:{port}" for name in names] + (names if port == 80 else [])
    return hosts + [h for h in extra if h not in hosts]


class Door:
    """The ASGI middleware; ``check_host`` is off for a gateway bound beyond loopback
    (the token guards it and any DNS name may point at it)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_body_bytes: int,
        hosts: Sequence[str] | None,
        origins: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.hosts = None if hosts is None else {h.lower() for h in hosts}
        self.origins = (
            None
            if hosts is None
            else {f"http://{h}".lower() for h in hosts} | {o.lower() for o in origins}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        problem = self._refusal(scope, headers)
        if problem is not None:
            await _send_error(send, *problem)
            return
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body_bytes
            except ValueError:
                await _send_error(send, 400, ErrorCode.BAD_REQUEST.value, "bad Content-Length")
                return
            if too_big:
                await _send_error(send, 413, *self._too_large())
                return
        await self.app(scope, self._bounded(receive, send), send)

    def _refusal(self, scope: Scope, headers: dict[str, bytes]) -> tuple[int, str, str] | None:
        if self.hosts is not None:
            host = headers.get("host", b"").decode("latin-1").lower()
            if host not in self.hosts:
                return 421, "bad_host", f"Host {host!r} is not this gateway (DNS rebinding?)"
            origin = headers.get("origin")
            if (
                origin is not None
                and self.origins is not None
                and origin.decode("latin-1").lower() not in self.origins
            ):
                return 403, "bad_origin", "requests from this Origin are not accepted"
        path: str = scope.get("path", "")
        if self.token is not None and not (path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)):
            auth = headers.get("authorization", b"")
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                return 401, "unauthorized", "send Authorization: Bearer <the gateway token>"
        return None

    def _too_large(self) -> tuple[str, str]:
        return (
            ErrorCode.PAYLOAD_TOO_LARGE.value,
            f"the request body is over {self.max_body_bytes} bytes",
        )

    def _bounded(self, receive: Receive, send: Send) -> Receive:
        """``receive`` that counts body bytes (a chunked body has no Content-Length)."""
        seen = 0
        limit = self.max_body_bytes

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return bounded


class BodyTooLarge(Exception):
    """A streamed body passed the limit; the app answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over {limit} bytes")
        self.limit = limit


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="skillscale"'))
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
