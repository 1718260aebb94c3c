"""``python -m certaindex.cli``."""

import sys

from certaindex.cli import main

sys.exit(main())
