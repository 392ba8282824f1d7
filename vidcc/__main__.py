"""`python -m vidcc ...` is the `vidcc` command (works before a shell has picked up the new script)."""

import sys

from vidcc.cli import main

sys.exit(main())
