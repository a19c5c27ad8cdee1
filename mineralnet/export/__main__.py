"""`python -m mineralnet.export --run RUN ...`: the same command as `python export.py` (see docs/export.md)."""

import sys

from mineralnet.export.cli import main

sys.exit(main())
