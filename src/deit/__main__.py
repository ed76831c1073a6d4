"""`python -m deit ...` (and `torchrun ... -m deit train ...`)."""

import sys

from .cli import main

sys.exit(main())
