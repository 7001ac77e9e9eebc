"""The SkillTopic operator: its handlers called directly, what they render, and its API calls."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from aiohttp import web

from skillscale.topic_operator import render
from skillscale.topic_operator.handlers import TopicOperator
from skillscale.topic_operator.kube import ApiApplier, apply_path
from tests.deploy_checks import K8S, load_docs, validate_object
from tests.helpers import ROOT

LOG = logging.getLogger("test-operator")


class RecordingApplier:
    def __init__(self, fail: bool = False) -> None:
        self.applied: list[dict[str, Any]] = []
        self.fail = fail

    async def apply(self, obj: Mapping[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("403 Forbidden")
        self.applied.append(json.loads(json.dumps(obj)))


def example(name: str) -> dict[str, Any]:
    docs = load_docs(K8S / "examples" / "skilltopic-data-processing.yaml")
    body = next(d for d in docs if d["metadata"]["name"] == name)
    body["metadata"].update(uid=f"uid-{name}", generation=3)
    return body


async def reconcile(body: dict[str, Any], applier: RecordingApplier) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    operator = TopicOperator(applier, image="registry.example/skillscale:0.1.0")
    await operator.reconcile(body=body, namespace=body["metadata"]["namespace"], patch=patch,
                             logger=LOG, spec=body["spec"], meta=body["metadata"])  # fmt: skip
    return patch


async def test_a_skilltopic_becomes_an_owned_deployment_and_scaled_object(
    capsys: pytest.CaptureFixture[str],
) -> None:
    applier = RecordingApplier()
    body = example("data-processing")
    patch = await reconcile(body, applier)
    deployment, scaled = applier.applied
    assert (deployment["kind"], scaled["kind"]) == ("Deployment", "ScaledObject")
    for obj in applier.applied:
        assert validate_object(obj)  # kubernetes-validate / the KEDA CRD
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "skillscale.io/v1alpha1", "kind": "SkillTopic",
                         "name": "data-processing", "uid": "uid-data-processing",
                         "controller": True, "blockOwnerDeletion": True}  # fmt: skip
        assert obj["metadata"]["namespace"] == "skillscale"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/skillscale:0.1.0"  # the operator's --image
    args = container["args"]
    assert args[:3] == ["server", "--topic", "TOPIC_DATA_PROCESSING"]
    assert args[args.index("--skills-dir") + 1] == "/var/lib/skillscale/skills/data-processing"
    assert "replicas" not in deployment["spec"]  # KEDA's to set
    # Its servers are given both halves of k8s/proxy.yaml's pair, primary first.
    env = {e["name"]: e.get("value") for e in container["env"]}
    services = [d["metadata"]["name"] for d in load_docs(K8S / "proxy.yaml")
                if d["kind"] == "Service"]  # fmt: skip
    for variable, port in (("ROUTER", 5566), ("XSUB", 5444), ("XPUB", 5555)):
        assert env[f"SKILLSCALE_PROXY_{variable}"] == ",".join(
            f"tcp://{name}:{port}" for name in services
        )
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["metadata"]["query"] == render.load_query("TOPIC_DATA_PROCESSING")
    assert trigger["metadata"]["threshold"] == "4"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 10)
    status = patch["status"]
    assert status["observedGeneration"] == 3
    ready = {c["type"]: c for c in status["conditions"]}
    assert ready["Ready"]["status"] == "True" and ready["Rendered"]["status"] == "True"
    assert status["deployment"] == status["scaledObject"] == "skillscale-server-data-processing"
    with capsys.disabled():
        print("\n# SkillTopic data-processing rendered by the operator:")
        print(yaml.safe_dump_all(applier.applied, sort_keys=False, width=100))
        print("# status:", json.dumps(status["conditions"]))


async def test_a_pvc_skills_source_and_overrides() -> None:
    applier = RecordingApplier()
    await reconcile(example("code-analysis"), applier)
    deployment, scaled = applier.applied
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "skills"]
    assert volume["persistentVolumeClaim"] == {"claimName": "skillscale-skills", "readOnly": True}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "skills"]
    assert mount["subPath"] == "code-analysis"
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert scaled["spec"]["minReplicaCount"] == 1 and scaled["spec"]["maxReplicaCount"] == 4
    assert scaled["spec"]["triggers"][0]["metadata"]["threshold"] == "6"
    # The pod outlives the server's drain: --grace 20 (default) < 30 s.
    args = pod["containers"][0]["args"]
    assert pod["terminationGracePeriodSeconds"] > float(args[args.index("--grace") + 1])


async def test_an_impossible_spec_is_reported_and_nothing_applied() -> None:
    applier = RecordingApplier()
    body = example("data-processing")
    body["spec"]["replicas"] = {"min": 5, "max": 2}
    patch: dict[str, Any] = {}
    with pytest.raises(kopf.PermanentError, match=r"replicas\.min 5 > replicas\.max 2"):
        await TopicOperator(applier).reconcile(body=body, namespace="skillscale", patch=patch)
    assert applier.applied == []
    ready = {c["type"]: c for c in patch["status"]["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")


async def test_a_failed_apply_is_retried_and_reported() -> None:
    patch: dict[str, Any] = {}
    with pytest.raises(kopf.TemporaryError, match="403 Forbidden"):
        await TopicOperator(RecordingApplier(fail=True)).reconcile(
            body=example("data-processing"), namespace="skillscale", patch=patch
        )
    ready = {c["type"]: c for c in patch["status"]["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")


def test_the_handlers_are_registered_for_create_update_and_resume() -> None:
    registry = TopicOperator(RecordingApplier()).registry()
    resource = kopf.Resource(render.GROUP, render.VERSION, render.PLURAL)
    handlers = registry._changing.get_all_handlers()  # kopf offers no public listing
    ours = [h for h in handlers if h.selector and h.selector.check(resource)]
    kinds = {str(h.reason).split(".")[-1].lower() for h in ours if h.reason}
    assert kinds == {"create", "update"}
    assert [h for h in ours if h.reason is None and h.initial]  # resume: seen at start-up


async def test_server_side_apply_over_the_api() -> None:
    """The applier's PATCH against a local stand-in for the API server."""
    seen: list[tuple[str, str, str, dict[str, Any]]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.method, request.path_qs, request.headers["Content-Type"],
                     await request.json()))  # fmt: skip
        if request.headers.get("Authorization") != "Bearer t0ken":
            return web.Response(status=401, text="Unauthorized")
        return web.json_response({"kind": "Deployment"})

    app = web.Application()
    app.router.add_route("PATCH", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        applier = ApiApplier()
        applier.info = kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", token="t0ken")
        obj = render.render_deployment(render.TopicSpec("TOPIC_X", {"imagePath": "/s/x"}))
        await applier.apply(obj)
        method, path, ctype, body = seen[0]
        assert (method, ctype) == ("PATCH", "application/apply-patch+yaml")
        assert path == ("/apis/apps/v1/namespaces/skillscale/deployments/skillscale-server-x"
                        "?fieldManager=skillscale-operator&force=true")  # fmt: skip
        assert body == obj
        applier.info = kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", token="wrong")
        with pytest.raises(RuntimeError, match="401"):
            await applier.apply(obj)  # never logged in through kopf: nothing to redo
        # Logged in through kopf's handler: a rotated token is read again, once.
        tokens = iter(["stale", "t0ken", "never"])
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(kopf, "login_with_service_account", lambda **_: kopf.ConnectionInfo(
                server=f"http://127.0.0.1:{port}", token=next(tokens)))  # fmt: skip
            applier.login(logger=LOG)
            seen.clear()
            await applier.apply(obj)
            assert len(seen) == 2 and applier.info is not None and applier.info.token == "t0ken"
            tokens = iter(["bad", "worse"])
            applier.login(logger=LOG)
            with pytest.raises(RuntimeError, match="401"):
                await applier.apply(obj)  # still refused after one fresh login: reported
    finally:
        await runner.cleanup()
    with pytest.raises(ValueError, match="does not apply Secret"):
        apply_path({"apiVersion": "v1", "kind": "Secret", "metadata": {}})


def test_the_package_name_does_not_shadow_the_standard_library() -> None:
    probe = "import operator, skillscale.topic_operator.handlers; print(operator.itemgetter)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0 and "itemgetter" in result.stdout, result.stderr
    assert not (ROOT / "operator").exists()
    assert Path(ROOT / "topic_operator" / "py.typed").is_file()
