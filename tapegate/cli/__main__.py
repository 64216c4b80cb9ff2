"""`python -m tapegate.cli`: the `tapegate` command."""

import sys

from tapegate.cli import main

sys.exit(main())
