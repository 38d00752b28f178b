"""`python -m kmodlab`: the same command line as the installed `kmodlab` command (kmodlab.cli).

`python -m kmodlab --help` lists its commands and `python -m kmodlab COMMAND --help` their options.
"""

import sys

from kmodlab.cli import main

sys.exit(main())
