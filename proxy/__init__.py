"""The SkillScale bus: an asyncio XSUB/XPUB proxy with Prometheus metrics."""

from proxy.metrics import ProxyMetrics
from proxy.proxy import Proxy, ProxyConfig, run_proxy

__all__ = ["Proxy", "ProxyConfig", "ProxyMetrics", "run_proxy"]
