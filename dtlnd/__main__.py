"""``python -m dtlnd``: the same as the ``dtlnd`` command."""

import sys

from .cli import main

sys.exit(main())
