"""`python -m worker.cli`: the `roomserver` command."""

import sys

from worker.cli import main

sys.exit(main())
