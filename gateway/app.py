"""The FastAPI app: the HTTP API (``/v1``), the health probes and the console.

Handlers are thin: each turns its body into a :class:`Gateway` call and the
answer into a model. Every non-2xx answer has the one shape
:class:`~skillscale.gateway.models.ErrorResponse`; fabric error codes map to
statuses in :func:`~skillscale.gateway.service.http_status`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from skillscale import __version__
from skillscale.core.errors import ErrorCode, SkillScaleError
from skillscale.gateway.models import (
    CanaryAction,
    ErrorDetail,
    ErrorResponse,
    Health,
    InvokeResponse,
    RequestList,
    RequestRecord,
    RequestSummary,
    RolloutAction,
    RolloutStatus,
    RoutedInvokeRequest,
    SkillHistory,
    SkillList,
    Stats,
    TopicInvokeRequest,
    TopicList,
    VersionDiff,
)
from skillscale.gateway.security import BodyTooLarge, Door, allowed_hosts, is_loopback
from skillscale.gateway.service import Gateway, error_detail, not_served
from skillscale.gateway.versions import REVISION_PATTERN

log = logging.getLogger(__name__)

STATIC = Path(str(files("skillscale.gateway") / "static"))
TOPIC_PATH = r"^[A-Za-z0-9_.:\-]{1,256}$"
RETRY_AFTER = "1"
TopicParam = Annotated[str, PathParam(pattern=TOPIC_PATH)]
RevisionParam = Annotated[str | None, Query(pattern=REVISION_PATTERN, max_length=48)]
NameParam = Annotated[str, PathParam(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$", max_length=64)]
CONSOLE_HEADERS = {
    "Cache-Control": "no-cache",
    # The console loads only its own files and talks only to this gateway.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "bad_request",
        401: "unauthorized (a token is configured)",
        404: "no_match / skill_not_found / no_server (unknown topic) / not found",
        413: "payload_too_large",
        422: "the body does not match its schema (bad_request)",
        502: "exec_failed / output_too_large: the skill ran and failed",
        503: "overloaded / no_server: retry after Retry-After seconds",
        504: "timeout / deadline_exceeded",
    }.items()
}


def _error(detail: ErrorDetail, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if detail.status == 503:
        headers["Retry-After"] = RETRY_AFTER
    return JSONResponse(
        ErrorResponse(error=detail).model_dump(mode="json", exclude_none=True),
        status_code=detail.status,
        headers=headers,
    )


ANSWER_FIELDS = frozenset(InvokeResponse.model_fields) & frozenset(RequestRecord.model_fields)
"""The record's fields that make up an :class:`InvokeResponse` (the same names)."""


def _answer(record: RequestRecord) -> Response:
    if record.status == "error":
        assert record.error is not None
        return _error(record.error)
    # The record holds exactly the response's fields (status is "success" here):
    # one serialisation in pydantic-core, no second model built and validated.
    body = record.model_dump_json(include=set(ANSWER_FIELDS), exclude_none=True)
    return Response(body, media_type="application/json")


async def invoke_on_topic(gateway: Gateway, topic: str, body: TopicInvokeRequest) -> Response:
    """``POST /v1/topics/{topic}/invoke`` once its body is parsed (both paths)."""
    known = gateway.known_topics()
    if topic not in known:
        await gateway.skills()  # a server may have come up since the last look
        known = gateway.known_topics()
        if topic not in known:
            exc = not_served(topic, known)
            return _error(error_detail(exc.code, exc.message, status=404))
    record = await gateway.invoke(topic, body.intent(), timeout=body.timeout)
    return _answer(record)


class GatewayApp(FastAPI):
    """The FastAPI app behind its :class:`Door`, with a lean path for the hot endpoint.

    FastAPI's per-request machinery (dependency solving, a body parsed by
    ``json.loads`` and then validated from Python objects, its exception and
    telemetry middleware) costs more than everything else a trivial call
    spends in the gateway. So ``POST /v1/topics/{topic}/invoke`` with a JSON
    body and no ``Origin`` (no CORS to apply) is answered by :meth:`_invoke`:
    the body is read (bounded by the door), parsed and validated in one
    pydantic-core pass, and answered by :func:`invoke_on_topic`, which the
    FastAPI route uses too. A body that does not validate is replayed, byte
    for byte, into FastAPI, so every error answer stays exactly FastAPI's,
    and the route stays in the OpenAPI document.
    """

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gateway = gateway
        cfg = gateway.config
        loopback = is_loopback(cfg.host)
        self.door = Door(
            self._inside,
            token=cfg.token,
            max_body_bytes=cfg.max_body_bytes,
            hosts=allowed_hosts(cfg.host, cfg.port, cfg.allowed_hosts) if loopback else None,
            origins=[*cfg.allowed_origins, *cfg.cors_origins],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.door(scope, receive, send)

    async def _inside(self, scope: Scope, receive: Receive, send: Send) -> None:
        topic = _fast_topic(scope)
        if topic is None:
            await super().__call__(scope, receive, send)
        else:
            await self._invoke(topic, scope, receive, send)

    async def _invoke(self, topic: str, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away before sending its body
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except BodyTooLarge as exc:
            await _error(error_detail(ErrorCode.PAYLOAD_TOO_LARGE, str(exc)))(scope, receive, send)
            return
        raw = b"".join(chunks)
        try:
            body = TopicInvokeRequest.model_validate_json(raw)
        except ValidationError:
            await super().__call__(scope, _replay(raw, receive), send)
            return
        try:
            response = await invoke_on_topic(self.gateway, topic, body)
        except SkillScaleError as exc:
            response = _error(error_detail(exc.code, exc.message, exc.request_id))
        except Exception:
            log.exception("invoke on %s failed", topic)
            response = _error(error_detail(ErrorCode.INTERNAL, "the gateway failed"))
        await response(scope, receive, send)


_INVOKE_PREFIX, _INVOKE_SUFFIX = "/v1/topics/", "/invoke"
JSON_TYPE = b"application/json"
_TOPIC_RE = re.compile(TOPIC_PATH)


def _fast_topic(scope: Scope) -> str | None:
    """The topic of a request :class:`FastInvoke` may answer itself, else None."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("query_string"):
        return None
    path: str = scope["path"]
    if not (path.startswith(_INVOKE_PREFIX) and path.endswith(_INVOKE_SUFFIX)):
        return None
    topic = path[len(_INVOKE_PREFIX) : -len(_INVOKE_SUFFIX)]
    if not _TOPIC_RE.fullmatch(topic):
        return None
    for name, value in scope["headers"]:
        if name == b"origin":
            return None  # a browser's cross-origin call: CORS (inside FastAPI) answers it
        if name == b"content-type" and value.split(b";")[0].strip().lower() != JSON_TYPE:
            return None
    return topic


def _replay(raw: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``raw`` as the whole body, then the real one's messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


def create_app(gateway: Gateway) -> GatewayApp:
    """The ASGI app over a started (or about to be started) :class:`Gateway`."""
    cfg = gateway.config
    app = GatewayApp(
        gateway,
        # No OpenTelemetry here: its per-request check alone costs tens of µs.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="SkillScale gateway",
        version=__version__,
        description="The SkillScale fabric over HTTP: topics, skills, calls, traces, events.",
        docs_url="/docs",
        redoc_url=None,
    )

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
        return _error(
            error_detail(ErrorCode.BAD_REQUEST, problems or "invalid request", status=422)
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        # Keep the exception's headers (a 405's Allow, RFC 9110).
        detail = error_detail("http_error", str(exc.detail), status=exc.status_code)
        return _error(detail, dict(exc.headers or {}))

    @app.exception_handler(BodyTooLarge)
    async def on_too_large(request: Request, exc: BodyTooLarge) -> Response:
        return _error(error_detail(ErrorCode.PAYLOAD_TOO_LARGE, str(exc)))

    @app.exception_handler(SkillScaleError)
    async def on_fabric(request: Request, exc: SkillScaleError) -> Response:
        return _error(error_detail(exc.code, exc.message, exc.request_id))

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process answers (liveness)."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    async def readyz() -> Response:
        """Connected to the fabric (readiness)."""
        if gateway.ready and gateway.client.connected:
            return JSONResponse(Health(status="ok").model_dump())
        body = Health(status="unavailable", detail="not connected to the proxy")
        return JSONResponse(body.model_dump(), status_code=503)

    @app.get("/v1/topics", response_model=TopicList, tags=["catalogue"])
    async def topics() -> TopicList:
        """Every topic: served (its servers answered) or configured, with its replicas."""
        return TopicList(topics=await gateway.topics())

    @app.get("/v1/skills", response_model=SkillList, tags=["catalogue"])
    async def skills(
        topic: Annotated[str | None, Query(pattern=TOPIC_PATH)] = None,
    ) -> SkillList:
        """The live catalogue, asked of the running servers; local SKILL.md bodies added."""
        listing = await gateway.skills()
        if topic is None:
            return listing
        return SkillList(
            skills=[s for s in listing.skills if s.topic == topic],
            errors={k: v for k, v in listing.errors.items() if k == topic},
        )

    @app.post(
        "/v1/topics/{topic}/invoke",
        response_model=InvokeResponse,
        response_model_exclude_none=True,
        responses=_ERRORS,
        tags=["invoke"],
    )
    async def invoke_topic(
        topic: Annotated[str, PathParam(pattern=TOPIC_PATH)], body: TopicInvokeRequest
    ) -> Response:
        """Run an explicit skill (with data) or match a task on one topic."""
        return await invoke_on_topic(gateway, topic, body)

    @app.post(
        "/v1/invoke",
        response_model=InvokeResponse,
        response_model_exclude_none=True,
        responses=_ERRORS,
        tags=["invoke"],
    )
    async def invoke_routed(body: RoutedInvokeRequest) -> Response:
        """Route a task across the catalogue (keyword or LLM router), then run it."""
        try:
            route = await gateway.route(body.task)
        except SkillScaleError as exc:
            return _error(error_detail(exc.code, exc.message))
        intent: dict[str, Any] = {"task": body.task}
        if body.data is not None:
            intent["data"] = body.data
        record = await gateway.invoke(route.topic, intent, timeout=body.timeout, route=route)
        return _answer(record)

    @app.get("/v1/requests", response_model=RequestList, tags=["requests"])
    async def requests(limit: Annotated[int, Query(ge=1, le=10_000)] = 50) -> RequestList:
        """The recent requests through this gateway, newest first."""
        return RequestList(
            requests=[
                RequestSummary(
                    request_id=r.request_id,
                    topic=r.topic,
                    received_at=r.received_at,
                    status=r.status,
                    http_status=r.http_status,
                    skill=r.skill,
                    code=r.error.code if r.error else None,
                    gateway_ms=r.timing.gateway_ms,
                )
                for r in gateway.recent(limit)
            ]
        )

    @app.get(
        "/v1/requests/{request_id}",
        response_model=RequestRecord,
        responses={404: _ERRORS[404]},
        tags=["requests"],
    )
    async def request(
        request_id: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.:@\-]{1,128}$")],
    ) -> Response:
        """One recent request: what was sent, the reply, its _trace and trace events."""
        record = gateway.request(request_id)
        if record is None:
            return _error(
                error_detail(
                    "not_found", f"request {request_id} is not among the recent ones", status=404
                )
            )
        return Response(record.model_dump_json(), media_type="application/json")

    @app.get(
        "/v1/events",
        tags=["events"],
        responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream"}},
        response_class=Response,
    )
    async def events() -> EventSourceResponse:
        """Server-sent events: ``execution`` traces, ``skills_changed``, ``request``."""
        stream = gateway.listen()

        async def frames() -> AsyncIterator[dict[str, str]]:
            async for event in stream:
                yield {"event": str(event.get("event", "message")), "data": json.dumps(event)}

        # A first comment line flushes the headers at once (proxies, fetch readers).
        return EventSourceResponse(frames(), ping=15)

    skill_path = "/v1/skills/{topic}/{name}"
    version_errors: dict[int | str, dict[str, Any]] = {k: _ERRORS[k] for k in (400, 404, 422)}

    @app.get(skill_path + "/rollout", response_model=RolloutStatus, responses=version_errors,
             tags=["versions"])  # fmt: skip
    async def rollout_status(topic: TopicParam, name: NameParam) -> RolloutStatus:
        """A skill's versions, its canary and the canary's statistics."""
        return await gateway.rollout_status(topic, name)

    @app.post(skill_path + "/promote", response_model=RolloutStatus, responses=version_errors,
              tags=["versions"])  # fmt: skip
    async def promote(topic: TopicParam, name: NameParam, body: RolloutAction) -> RolloutStatus:
        """Make the canary (or, with none, the newest draft) the active version."""
        return await gateway.change_rollout(topic, name, "promote", reason=body.reason)

    @app.post(skill_path + "/canary", response_model=RolloutStatus, responses=version_errors,
              tags=["versions"])  # fmt: skip
    async def canary(topic: TopicParam, name: NameParam, body: CanaryAction) -> RolloutStatus:
        """Put a draft (the newest by default) in canary on a share of the callers."""
        return await gateway.change_rollout(topic, name, "canary", body.version, share=body.share)

    @app.post(skill_path + "/reject", response_model=RolloutStatus, responses=version_errors,
              tags=["versions"])  # fmt: skip
    async def reject(topic: TopicParam, name: NameParam, body: RolloutAction) -> RolloutStatus:
        """Retire the canary without serving it."""
        return await gateway.change_rollout(topic, name, "reject", reason=body.reason)

    @app.post(skill_path + "/rollback", response_model=RolloutStatus, responses=version_errors,
              tags=["versions"])  # fmt: skip
    async def rollback(topic: TopicParam, name: NameParam, body: RolloutAction) -> RolloutStatus:
        """Serve a retired version again (the one active before, by default)."""
        return await gateway.change_rollout(topic, name, "rollback", body.version, body.reason)

    @app.get(skill_path + "/diff", response_model=VersionDiff, responses=version_errors,
             tags=["versions"])  # fmt: skip
    async def diff(
        topic: TopicParam, name: NameParam, old: RevisionParam = None, new: RevisionParam = None
    ) -> VersionDiff:
        """What changed between two revisions: rollout versions (``1``, ``2``...) or
        commits of the skill's git history (``git:HEAD~1``, ``git:<sha>``). Defaults:
        the active version against the canary (or the newest draft, or the version
        active before)."""
        return await gateway.version_diff(topic, name, old, new)

    @app.get(skill_path + "/history", response_model=SkillHistory, responses=version_errors,
             tags=["versions"])  # fmt: skip
    async def history(
        topic: TopicParam, name: NameParam, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> SkillHistory:
        """The skill's own git history, newest first (the distiller's commits, hand edits)."""
        return await gateway.history(topic, name, limit)

    @app.get("/v1/stats", response_model=Stats, tags=["stats"])
    async def stats() -> Stats:
        """The per-topic figures the proxy exports (its /metrics, scraped)."""
        return await gateway.stats()

    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=CONSOLE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    if cfg.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
