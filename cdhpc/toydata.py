"""``python -m cdhpc.toydata OUT [--seed N] ...``: the entry point; the code is ``cdhpc.corpora.toy``
(its ``build`` module writes the corpus and eval sets)."""

import sys

from cdhpc.corpora.toy.build import main

if __name__ == "__main__":
    sys.exit(main())
