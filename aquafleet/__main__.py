"""`python -m aquafleet`: the `aquafleet` command."""

import sys

from aquafleet.cli import main

sys.exit(main())
