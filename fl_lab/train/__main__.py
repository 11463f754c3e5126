"""``python -m fl_lab.train``: see :mod:`fl_lab.train.cli`."""

import sys

from .cli import main

sys.exit(main())
