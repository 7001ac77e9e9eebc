"""``python -m skill_server`` is ``skillscale server``."""

import sys

from skillscale.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["server", *sys.argv[1:]]))
