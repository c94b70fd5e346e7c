"""`python -m arftlib.train` — the same as `python -m arftlib train` (used by `accelerate launch -m`)."""

import sys

from arftlib.train.cli import main

sys.exit(main())
