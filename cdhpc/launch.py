"""``python -m cdhpc.launch sweep.yaml [key=value ...]``: the entry point; the launcher is
``cdhpc.ui.launch`` (docs/design.md §2)."""

import sys

from cdhpc.ui.launch import main

if __name__ == "__main__":
    sys.exit(main())
