"""Where Turnout keeps files that outlive one process."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Where ``turnout start`` keeps its state by default.

    Example::

        data_dir()  # PosixPath('/home/me/.local/share/turnout')
    """
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "turnout"
