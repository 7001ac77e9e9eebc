"""Old import path, kept for one release: use ``skillscale.core.llm``."""

from skillscale.core.llm import *  # noqa: F403
