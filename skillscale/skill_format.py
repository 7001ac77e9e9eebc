"""Old import path, kept for one release: use ``skillscale.core.skill_format``."""

from skillscale.core.skill_format import *  # noqa: F403
