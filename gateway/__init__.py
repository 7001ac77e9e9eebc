"""The HTTP gateway and the console: the fabric behind one documented HTTP API.

``skillscale gateway`` (and ``skillscale up``) serve :func:`create_app` with
uvicorn. :class:`Gateway` is the role object: it owns an SDK client, the
event subscription (execution traces, skills-changed events), the ring of
recent requests and the proxy-metrics scraper. The console is plain
HTML/CSS/JS in ``static/``, served at ``/``.
"""

from skillscale.gateway.app import create_app
from skillscale.gateway.service import Gateway, GatewayConfig

__all__ = ["Gateway", "GatewayConfig", "create_app"]
