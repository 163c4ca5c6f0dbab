"""`python -m xdplbd.lab up|down|status|config`: see xdplbd.lab.topology."""

import sys

from xdplbd.lab.topology import main

sys.exit(main())
