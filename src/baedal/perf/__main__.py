"""``python -m baedal.perf`` (until ``baedal perf`` is wired into the CLI)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
