"""`python -m trainer.cli ...` is the `trainer` command."""

import sys

from trainer.cli import main

sys.exit(main())
