"""``python -m worker``: the same as ``erdn worker`` (serve in the foreground; status; stop)."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
