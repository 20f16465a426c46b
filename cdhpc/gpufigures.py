"""``python -m cdhpc.gpufigures record|table ...``: the entry point; the code is
``cdhpc.ui.gpufigures`` (docs/gpu.md)."""

import sys

from cdhpc.ui.gpufigures import main

if __name__ == "__main__":
    sys.exit(main())
