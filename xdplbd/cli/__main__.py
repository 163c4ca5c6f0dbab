"""`python -m xdplbd.cli` is `xdplb`."""

import sys

from xdplbd.cli.commands import main

sys.exit(main())
