"""The SkillTopic controller: kopf handlers that render and apply, and report status.

Life of a SkillTopic, top to bottom:

1. created, changed, or seen again when the operator starts (``resume``):
   :meth:`TopicOperator.reconcile` renders the topic's Deployment and
   ScaledObject (:mod:`skillscale.topic_operator.render`), marks both as
   owned by the SkillTopic (``ownerReferences`` with ``controller``, so
   Kubernetes' garbage collector deletes them with it), and applies them
   with server-side apply;
2. the outcome goes into ``status.conditions`` (``Rendered``, ``Ready``) with
   ``observedGeneration``; a spec the schema cannot reject (``min > max``)
   is a permanent error, a failed apply is retried with backoff;
3. deleted: nothing to do here; the owned objects are collected.

Handlers take keyword arguments as kopf passes them, so tests call them
directly with a recording :class:`Applier` and check what was rendered.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, MutableMapping
from typing import Any, Protocol

import kopf

from skillscale.topic_operator.render import (
    GROUP,
    PLURAL,
    PROMETHEUS_URL,
    VERSION,
    TopicSpec,
    render_deployment,
    render_scaled_object,
)

log = logging.getLogger(__name__)

FIELD_MANAGER = "skillscale-operator"


class Applier(Protocol):
    """Creates or updates one object (server-side apply)."""

    async def apply(self, obj: Mapping[str, Any]) -> None:
        """Apply ``obj``; raise on failure."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    """A status condition in the Kubernetes convention."""
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": _now(),
    }


class TopicOperator:
    """Holds what handlers need: the applier, the image and the Prometheus address."""

    def __init__(
        self, applier: Applier, *, image: str | None = None, prometheus: str = PROMETHEUS_URL
    ) -> None:
        self.applier = applier
        self.image = image
        self.prometheus = prometheus

    def render(
        self, body: Mapping[str, Any], namespace: str
    ) -> tuple[TopicSpec, list[dict[str, Any]]]:
        """The SkillTopic's owned objects, with their owner references set."""
        spec = TopicSpec.from_resource(body.get("spec") or {})
        if self.image and "image" not in (body.get("spec") or {}):
            spec.image = self.image
        problems = spec.problems()
        if problems:
            raise kopf.PermanentError("; ".join(problems))
        objects = [
            render_deployment(spec, namespace),
            render_scaled_object(spec, namespace, self.prometheus),
        ]
        raw: Any = dict(body)  # kopf's RawBody is a TypedDict of the same keys
        owner = body if isinstance(body, kopf.Body) else kopf.Body(raw)
        kopf.append_owner_reference(
            objects, owner=owner, controller=True, block_owner_deletion=True
        )
        return spec, objects

    async def reconcile(
        self,
        *,
        body: Mapping[str, Any],
        namespace: str | None,
        patch: MutableMapping[str, Any],
        logger: logging.Logger | logging.LoggerAdapter[Any] = log,
        **_: Any,
    ) -> dict[str, Any]:
        """Create/update/resume handler: render, apply, report."""
        meta = body.get("metadata") or {}
        generation = int(meta.get("generation") or 0)
        ns = namespace or meta.get("namespace") or "default"
        status = patch.setdefault("status", {})
        status["observedGeneration"] = generation
        try:
            spec, objects = self.render(body, ns)
        except kopf.PermanentError as exc:
            status["conditions"] = [
                condition("Rendered", False, "InvalidSpec", str(exc), generation),
                condition("Ready", False, "InvalidSpec", str(exc), generation),
            ]
            raise
        names = {obj["kind"]: obj["metadata"]["name"] for obj in objects}
        rendered = condition(
            "Rendered", True, "Rendered",
            f"Deployment {names['Deployment']} and ScaledObject {names['ScaledObject']}",
            generation,
        )  # fmt: skip
        try:
            for obj in objects:
                await self.applier.apply(obj)
        except Exception as exc:
            message = f"applying failed: {type(exc).__name__}: {exc}"
            status["conditions"] = [
                rendered,
                condition("Ready", False, "ApplyFailed", message, generation),
            ]
            raise kopf.TemporaryError(message, delay=10) from exc
        status["conditions"] = [
            rendered,
            condition(
                "Ready", True, "Applied",
                f"{spec.topic}: {spec.min_replicas}-{spec.max_replicas} replicas, "
                f"{spec.queue_target} requests per replica",
                generation,
            ),
        ]  # fmt: skip
        status["deployment"] = names["Deployment"]
        status["scaledObject"] = names["ScaledObject"]
        logger.info("reconciled %s into %s", spec.topic, ", ".join(names.values()))
        return {"deployment": names["Deployment"], "scaledObject": names["ScaledObject"]}

    def registry(self) -> kopf.OperatorRegistry:
        """A kopf registry with this operator's handlers (and the cluster login)."""
        registry = kopf.OperatorRegistry()
        for on in (kopf.on.create, kopf.on.update, kopf.on.resume):
            on(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")(self.reconcile)
        # An applier that talks to the API logs in itself, so it keeps the credentials.
        kopf.on.login(registry=registry)(getattr(self.applier, "login", login))
        return registry


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: its service account; elsewhere: the kubeconfig (kopf's own helpers)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
