"""Old import path, kept for one release: use ``skillscale.sdk.client``."""

from skillscale.sdk.client import *  # noqa: F403
