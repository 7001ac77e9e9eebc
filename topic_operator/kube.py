"""Server-side apply of the operator's objects over the Kubernetes API.

Hand-written on purpose: applying an object is one ``PATCH`` with
``application/apply-patch+yaml`` (the API server merges it and tracks field
ownership), and ``aiohttp`` comes with kopf already. The alternatives were
weighed (docs/deploy.md, "Why the operator's API client is hand-written"):
the official ``kubernetes`` client is synchronous; ``kubernetes_asyncio``
is a large generated dependency (a second credential loader beside kopf's,
API discovery at start for its dynamic client) for this one call; kopf has
no public client for other objects (its own is private API). The
credentials are the ones kopf logged in with (service account in a pod,
kubeconfig elsewhere); a 401 (a rotated service-account token) logs in
again once and retries.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from skillscale.topic_operator.handlers import FIELD_MANAGER

_PATHS = {
    ("apps/v1", "Deployment"): "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
    (
        "keda.sh/v1alpha1",
        "ScaledObject",
    ): "/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{name}",
    ("v1", "ConfigMap"): "/api/v1/namespaces/{ns}/configmaps/{name}",
}
TIMEOUT = 30.0
"""Seconds one apply may take."""


def apply_path(obj: Mapping[str, Any]) -> str:
    """The API path (with field manager and force) that applies ``obj``."""
    key = (obj["apiVersion"], obj["kind"])
    if key not in _PATHS:
        raise ValueError(f"the operator does not apply {key[1]} ({key[0]})")
    meta = obj["metadata"]
    path = _PATHS[key].format(ns=meta["namespace"], name=meta["name"])
    return f"{path}?fieldManager={FIELD_MANAGER}&force=true"


class ApiApplier:
    """An :class:`~skillscale.topic_operator.handlers.Applier` over the API server."""

    def __init__(self) -> None:
        self.info: kopf.ConnectionInfo | None = None
        self._login_kwargs: dict[str, Any] | None = None

    def login(self, **kwargs: Any) -> kopf.ConnectionInfo | None:
        """kopf's login handler: log in as kopf would, and keep the credentials."""
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        self.info = info
        self._login_kwargs = kwargs
        return info

    def _ssl(self, info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
        if info.insecure:
            return False
        context = ssl.create_default_context(cafile=info.ca_path or None)
        if info.ca_data:
            data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
            context.load_verify_locations(cadata=data)
        if info.certificate_path and info.private_key_path:
            context.load_cert_chain(info.certificate_path, info.private_key_path)
        return context

    async def apply(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply ``obj``; raises with the API server's message on failure."""
        status, text = await self._patch(obj)
        if status == 401 and self._login_kwargs is not None:
            # The token was rotated (bound service-account tokens expire):
            # read the credentials again, once.
            self.login(**self._login_kwargs)
            status, text = await self._patch(obj)
        if status >= 300:
            raise RuntimeError(f"{status} from {apply_path(obj)}: {text}")

    async def _patch(self, obj: Mapping[str, Any]) -> tuple[int, str]:
        info = self.info
        if info is None:
            raise RuntimeError("not logged in to the cluster yet")
        headers = {"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"}
        if info.token:
            headers["Authorization"] = f"Bearer {info.token}"
        url = info.server.rstrip("/") + apply_path(obj)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.patch(
                url, data=json.dumps(obj), headers=headers, ssl=self._ssl(info)
            ) as answer,
        ):
            text = (await answer.text())[:500] if answer.status >= 300 else ""
            return answer.status, text
