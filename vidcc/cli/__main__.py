import sys

from vidcc.cli import main

sys.exit(main())
