"""Old import path, kept for one release: use ``skillscale.core.discovery``."""

from skillscale.core.discovery import *  # noqa: F403
