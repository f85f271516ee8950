"""`python -m scratchlm` (and `torchrun -m scratchlm`)."""

import sys

from .cli import main

sys.exit(main())
