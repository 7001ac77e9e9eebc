"""``python -m skillscale`` is the ``skillscale`` command."""

import sys

from skillscale.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
