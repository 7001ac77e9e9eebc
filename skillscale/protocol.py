"""Old import path, kept for one release: use ``skillscale.core.protocol``."""

from skillscale.core.protocol import *  # noqa: F403
