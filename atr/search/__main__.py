"""`python -m atr.search`: the same as the `atr-search` console script."""

import sys

from .cli import main

sys.exit(main())
