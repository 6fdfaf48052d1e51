"""``python -m turnout.replica``: run one replica process (see ``turnout.replica.server``)."""

import sys

from turnout.replica.server import main

if __name__ == "__main__":
    sys.exit(main())
