"""``python -m densetune`` (and ``torchrun -m densetune``) runs the CLI."""

import sys

from densetune.cli import main

sys.exit(main())
