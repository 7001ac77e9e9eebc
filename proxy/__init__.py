"""The SkillScale bus: an asyncio XSUB/XPUB proxy with Prometheus metrics."""

from skillscale.proxy.metrics import ProxyMetrics
from skillscale.proxy.proxy import Proxy, ProxyConfig, run_proxy

__all__ = ["Proxy", "ProxyConfig", "ProxyMetrics", "run_proxy"]
