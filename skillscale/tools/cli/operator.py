"""``skillscale operator``: the SkillTopic controller (kopf)."""

from __future__ import annotations

import argparse
from typing import Any

from skillscale.tools.cli.common import EXIT_OK, _flag


def _cmd_operator(args: argparse.Namespace) -> int:
    import kopf

    from skillscale.core.runtime import setup_logging
    from skillscale.topic_operator.handlers import TopicOperator
    from skillscale.topic_operator.kube import ApiApplier

    setup_logging()
    operator = TopicOperator(ApiApplier(), image=args.image, prometheus=args.prometheus_url)
    namespaces = [n for n in (args.namespace or "").split(",") if n]
    liveness = None
    if args.health_port >= 0:
        liveness = f"http://{args.health_host}:{args.health_port}/healthz"
    # kopf.run owns the loop and the signals: SIGTERM stops watching, lets
    # running handlers finish, and exits.
    kopf.run(
        registry=operator.registry(),
        standalone=True,  # one replica: no peering objects needed
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
    return EXIT_OK


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
    p_op = sub.add_parser(
        "operator",
        help="reconcile SkillTopic resources into server Deployments and KEDA ScaledObjects",
    )
    _flag(
        p_op,
        "--namespace",
        "SKILLSCALE_OPERATOR_NAMESPACES",
        None,
        "comma-separated namespaces to watch",
        shown="all (cluster-wide)",
    )
    _flag(
        p_op,
        "--image",
        "SKILLSCALE_OPERATOR_IMAGE",
        None,
        "server image for SkillTopics that name none",
        shown="skillscale:0.1.0",
    )
    _flag(
        p_op,
        "--prometheus-url",
        "SKILLSCALE_PROMETHEUS_URL",
        "http://prometheus-server.monitoring.svc:80",
        "Prometheus the ScaledObjects' triggers query",
    )
    _flag(
        p_op,
        "--health-port",
        "SKILLSCALE_HEALTH_PORT",
        8080,
        "kopf's liveness endpoint /healthz, -1 = off",
        type=int,
    )
    _flag(
        p_op,
        "--health-host",
        "SKILLSCALE_HEALTH_HOST",
        "127.0.0.1",
        "interface of the liveness endpoint; a pod binds 0.0.0.0",
    )
    p_op.set_defaults(func=_cmd_operator)
