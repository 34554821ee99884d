"""`python -m agent` runs the `dutywatch` command line."""

import sys

from agent.cli import main

sys.exit(main())
