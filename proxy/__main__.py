"""``python -m turnout.proxy``: the HTTP proxy (normally started by the controller)."""

import sys

from .server import main

sys.exit(main())
