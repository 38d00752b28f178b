"""Run the lab's command line: python -m kmodlab up|down|status|ssh|image."""

import sys

from kmodlab.cli import main

sys.exit(main())
