"""``python -m skillscale`` is the ``skillscale`` command."""

import sys

from skillscale.cli import main

if __name__ == "__main__":
    sys.exit(main())
