"""Old import path, kept for one release: use ``skillscale.core.errors``."""

from skillscale.core.errors import *  # noqa: F403
