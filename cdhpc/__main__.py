import sys

from cdhpc.cli import main

sys.exit(main())
