"""Offline checks of the deploy files: schemas, the CLI they call, KEDA's arithmetic.

Shared by ``tests/test_deploy.py``, ``tests/test_operator.py`` and
``tests/test_scale_sim.py``; no cluster and no Docker engine are needed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helpers import ROOT

K8S = ROOT / "k8s"
SHARED = next(
    (p for p in (ROOT.parent / "shared", ROOT.parent.parent / "shared") if p.is_dir()),
    ROOT.parent / "shared",
)
"""The team's shared folder: ``../shared`` from the repository root (a copy sits
beside the clone in CI); ``../../shared`` for a git worktree under ``wt/``."""
KEDA_CRDS = SHARED / "data" / "keda"
K8S_VERSION = "1.30.0"
"""The oldest Kubernetes we claim (policy/v1 PDBs, autoscaling/v2, apps/v1)."""
CORE_GROUPS = ("v1", "apps/", "policy/", "rbac.authorization.k8s.io/", "networking.k8s.io/",
               "apiextensions.k8s.io/", "autoscaling/")  # fmt: skip


def load_docs(path: Path) -> list[dict[str, Any]]:
    """Every YAML document of a file (empty ones dropped); a fresh copy each call."""
    return copy.deepcopy(_load_docs(path))


@cache
def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest we ship: k8s/*.yaml and k8s/examples/*.yaml."""
    files = sorted(K8S.glob("*.yaml")) + sorted((K8S / "examples").glob("*.yaml"))
    return [f for f in files if f.name != "kustomization.yaml"]


def all_manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in manifest_files():
        for doc in load_docs(path):
            yield path, doc


def keda_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of KEDA's CRD for ``kind`` (from ../shared/data/keda)."""
    if not KEDA_CRDS.is_dir():
        pytest.skip(f"the upstream KEDA CRDs are not at {KEDA_CRDS} (shared/ beside the repo)")
    return _crd_schema(KEDA_CRDS / f"keda.sh_{kind.lower()}s.yaml")


@cache
def _crd_schema(path: Path) -> dict[str, Any]:
    (crd,) = load_docs(path)
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def skilltopic_schema() -> dict[str, Any]:
    return _crd_schema(K8S / "crd-skilltopic.yaml")


def unknown_fields(schema: dict[str, Any], value: Any, at: str = "") -> list[str]:
    """Fields the API server would silently prune (not in a structural schema).

    JSON Schema accepts them (OpenAPI schemas rarely say additionalProperties:
    false), so a misspelt key such as ``threshhold`` would pass validation and
    vanish in the cluster. This walks the object beside its schema.
    """
    found: list[str] = []
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return found
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                found += unknown_fields(props[key], item, f"{at}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(extra, item, f"{at}.{key}")
            elif props is not None and extra is not True and at != ".metadata":
                found.append(f"{at}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += unknown_fields(schema["items"], item, f"{at}[{i}]")
    return found


def validate_object(doc: dict[str, Any]) -> str:
    """Validate one object offline by kind; the name of the check that passed."""
    kind, api = doc.get("kind"), str(doc.get("apiVersion", ""))
    if api.startswith("keda.sh/"):
        schema = keda_schema(str(kind))
        jsonschema.Draft4Validator(schema).validate(doc)
        assert unknown_fields(schema, doc) == [], f"{kind}: fields KEDA would drop"
        return f"KEDA CRD {kind}"
    if api.startswith("skillscale.io/"):
        schema = skilltopic_schema()
        jsonschema.Draft4Validator(schema).validate(doc)
        assert unknown_fields(schema, doc) == [], f"{kind}: fields the CRD would drop"
        return "SkillTopic CRD"
    assert api.startswith(CORE_GROUPS), f"no schema known for {api} {kind}"
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    return f"kubernetes-validate {K8S_VERSION} strict"


# -- KEDA's arithmetic over the proxy's own /metrics ------------------------------------------

_TERM = re.compile(
    r"^\(?\s*sum\((?P<metric>[a-z_]+)\{(?P<label>[a-z_]+)=\"(?P<value>[^\"]+)\"\}\)"
    r"(?P<or>\s*or\s+vector\(0\))?\s*\)?$"
)


def evaluate_query(query: str, samples: dict[tuple[str, str], float]) -> float:
    """Evaluate the ScaledObject's PromQL over one scrape, as Prometheus would.

    Only the shape our triggers use is understood: ``(sum(m{topic="T"}) or
    vector(0)) + ...``; anything else fails the test rather than being guessed.
    A term whose series is missing is "no data" in PromQL (and makes a sum
    empty) unless it carries ``or vector(0)``.
    """
    total = 0.0
    for part in query.split(" + "):
        match = _TERM.match(part.strip())
        assert match, f"the evaluator does not understand {part!r} (query {query!r})"
        assert match["label"] == "topic", match["label"]
        key = (match["metric"], match["value"])
        if key in samples:
            total += samples[key]
        elif not match["or"]:
            raise AssertionError(f"{key} has no series and no 'or vector(0)': KEDA reads no data")
    return total


def scrape(text: str) -> dict[tuple[str, str], float]:
    """(metric, topic label) -> value from a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            topic = sample.labels.get("topic")
            if topic is not None:
                out[(sample.name, topic)] = sample.value
    return out


def keda_replicas(metric: float, scaled_object: dict[str, Any]) -> int:
    """KEDA's documented decision for one metric value.

    Activation: at or below ``activationThreshold`` a ScaledObject whose
    ``minReplicaCount`` is 0 goes to 0; above it KEDA activates (at least 1)
    and the HPA computes ``ceil(metric / threshold)`` for an AverageValue
    target (the metric is the topic total, not per pod), clamped to
    [max(min, 1), max].
    """
    spec = scaled_object["spec"]
    (trigger,) = spec["triggers"]
    assert trigger.get("metricType", "AverageValue") == "AverageValue"
    meta = trigger["metadata"]
    threshold = float(meta.get("threshold") or meta["targetValue"])
    activation = float(meta.get("activationThreshold") or meta.get("activationTargetValue") or 0)
    low, high = int(spec.get("minReplicaCount", 0)), int(spec.get("maxReplicaCount", 100))
    if metric <= activation and low == 0:
        return 0
    desired = math.ceil(metric / threshold)
    return max(max(low, 1), min(high, desired))


# -- the CLI the deploy files call ------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def env_twins(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``SKILLSCALE_*`` variable -> the flag it stands for, from the help texts."""
    twins: dict[str, argparse.Action] = {}
    for action in parser._actions:
        for name in re.findall(r"\[env (SKILLSCALE_[A-Z0-9_]+)", action.help or ""):
            twins[name] = action
    return twins


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
