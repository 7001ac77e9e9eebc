"""Liveness and readiness over HTTP, for every role (and extra read-only routes).

Kubernetes, Compose and ``skillscale health`` probe two paths:

* ``/healthz`` (liveness): the role's process is not wedged. 200 while the
  role has not crashed and its event loop has ticked within ``stale_after``
  seconds; 503 otherwise (the orchestrator then restarts it).
* ``/readyz`` (readiness): the role is serving. Each role says what that
  means (the proxy: its sockets are bound; a server: the proxy accepted its
  heartbeat and its fork server is up). 503 with the reason otherwise.

The answer is a small JSON object ``{"status": "ok"|"fail", "check": ...,
"reason": ...}``. The proxy mounts its Prometheus ``/metrics`` app and a JSON
queue endpoint on the same port; other roles serve health alone.

Use it in a role::

    health = RoleHealth(lambda: None if self.connected else "not connected")
    http = HealthServer(health)
    port = http.serve("127.0.0.1", 0)   # ... health.tick() from the loop ...
    http.close()

The server is a thread running the standard library's WSGI server (the same
one ``prometheus_client`` uses), not an asyncio HTTP stack: probes must still
be answered while the role's loop is busy, and a blocked loop must show as
a stale tick, not as a probe that hangs. Checks run in that thread, so they
must only read plain attributes (a bool, a float, a dict that is replaced,
never mutated), which is safe across threads in CPython.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
HEALTH_PATHS = (LIVENESS_PATH, READINESS_PATH)
"""The only probe paths any role serves (manifests are checked against them)."""

Check = Callable[[], "str | None"]
"""A check returns None when healthy, else a one-line reason."""

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Route = Callable[[dict[str, list[str]]], tuple[int, str, bytes]]
"""An extra GET route: takes the parsed query string, returns (status, content type, body)."""

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class RoleHealth:
    """What a role reports: crashed or not, loop ticks, and its readiness check.

    The role calls :meth:`tick` from its event loop (e.g. on each
    housekeeping round) and :meth:`set_crashed` from its crash hook.
    """

    def __init__(self, ready: Check, *, stale_after: float = 30.0) -> None:
        self._ready = ready
        self.stale_after = stale_after
        self._last_tick = time.monotonic()
        self._crashed: str | None = None

    def tick(self) -> None:
        """The loop is alive (called from the loop)."""
        self._last_tick = time.monotonic()

    def set_crashed(self, reason: str) -> None:
        """The role crashed: liveness fails from now on."""
        self._crashed = reason

    def live(self) -> str | None:
        """None when alive, else why not."""
        if self._crashed is not None:
            return f"crashed: {self._crashed}"
        silent = time.monotonic() - self._last_tick
        if silent > self.stale_after:
            return f"event loop silent for {silent:.0f} s"
        return None

    def ready(self) -> str | None:
        """None when serving, else why not (a dead role is never ready)."""
        return self.live() or self._ready()


MAX_CONNECTIONS = 32
"""Requests served at once; more are closed unanswered (a probe retries)."""
REQUEST_TIMEOUT = 10.0
"""Seconds a client may take to send its request (a silent one costs a thread)."""


class _Quiet(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """Probes arrive every few seconds: no access log line for each."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow client never holds up the role's exit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        # One thread per connection, but a bounded number of them.
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class HealthServer:
    """Serves ``/healthz`` and ``/readyz`` for a :class:`RoleHealth` on one port.

    ``routes``: extra GET paths (e.g. the proxy's JSON queue endpoint);
    ``mounts``: WSGI apps at exact paths (e.g. Prometheus at ``/metrics``).
    Every other path is 404.
    """

    def __init__(
        self,
        health: RoleHealth,
        *,
        routes: dict[str, Route] | None = None,
        mounts: dict[str, WsgiApp] | None = None,
    ) -> None:
        self.health = health
        self.routes = dict(routes or {})
        self.mounts = dict(mounts or {})
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The WSGI application (usable without a socket, e.g. in tests)."""
        path = environ.get("PATH_INFO", "")
        checks: dict[str, Check] = {
            LIVENESS_PATH: self.health.live,
            READINESS_PATH: self.health.ready,
        }
        if path in checks or path in self.routes:
            if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
                return _respond(start_response, 405, "text/plain", b"GET only\n")
            if path in self.routes:
                query = parse_qs(environ.get("QUERY_STRING", "")[:4096], max_num_fields=16)
                status, ctype, body = self.routes[path](query)
                return _respond(start_response, status, ctype, body)
            check = path.strip("/")
            try:
                reason = checks[path]()
            except Exception as exc:  # a failing check is a failed probe, never a 500 page
                reason = f"check failed: {type(exc).__name__}: {exc}"
            doc = {"status": "ok" if reason is None else "fail", "check": check}
            if reason is not None:
                doc["reason"] = reason
            body = (json.dumps(doc) + "\n").encode()
            code = 200 if reason is None else 503
            return _respond(start_response, code, "application/json", body)
        mounted = self.mounts.get(path)
        if mounted is not None:
            return mounted(environ, start_response)
        return _respond(start_response, 404, "text/plain", b"not found\n")

    def serve(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0 = any free port) in a thread; return the port."""
        http = make_server(host, port, self.app, _ThreadingServer, handler_class=_Quiet)
        self._http = http
        self._thread = threading.Thread(target=http.serve_forever, name="health-http", daemon=True)
        self._thread.start()
        self.port = int(http.server_port)
        return self.port

    def close(self) -> None:
        """Stop listening."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _respond(
    start_response: Callable[..., Any], status: int, ctype: str, body: bytes
) -> list[bytes]:
    start_response(
        f"{status} {_REASONS.get(status, 'Error')}",
        [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


def url_for(host: str, port: int, path: str = READINESS_PATH) -> str:
    """A probe URL for a bound address (a wildcard bind is probed on loopback)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104
    return f"http://{shown}:{port}{path}"
