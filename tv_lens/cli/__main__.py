"""``python -m tv_lens.cli``: the ``tv-lens`` command."""

import sys

from .main import main

sys.exit(main())
