"""``python -m lamina.core.cli``: the ``lamina`` command."""

import sys

from .app import main

sys.exit(main())
