"""``python -m proxy`` is ``skillscale proxy``."""

import sys

from skillscale.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["proxy", *sys.argv[1:]]))
