"""Log set-up shared by the controller, proxy and replica processes.

Each process writes its own log file through a ``RotatingFileHandler``, so the
process that writes a file is the one that rotates it. A child's stdout and
stderr are *not* that file: they go to a ``<name>.out`` file next to it (what
the interpreter prints when it crashes, and whatever user code prints). Were
they the same file, the inherited descriptor would keep writing into the
renamed ``.log.1`` after the first rotation.

Sizes come from the environment, so a test or an operator can change them for
every process of an instance at once:

- ``TURNOUT_LOG_MAX_BYTES``: size at which a log file rotates (default 10 MiB);
- ``TURNOUT_LOG_BACKUPS``: rotated files kept per log (default 5).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

MAX_BYTES_ENV = "TURNOUT_LOG_MAX_BYTES"
BACKUPS_ENV = "TURNOUT_LOG_BACKUPS"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5


def _env_int(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, default)))
    except ValueError:
        return default


def rotating_handler(path: Path) -> logging.Handler:
    """A handler appending to ``path``, rotated by size as the environment says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return logging.handlers.RotatingFileHandler(
        path,
        maxBytes=_env_int(MAX_BYTES_ENV, DEFAULT_MAX_BYTES),
        backupCount=_env_int(BACKUPS_ENV, DEFAULT_BACKUPS),
        encoding="utf-8",
    )


def configure(
    log_file: Path | None,
    fmt: str,
    *,
    defaults: dict[str, str] | None = None,
    also_tty: bool = False,
) -> None:
    """Send the root logger (INFO and up) to ``log_file``, else to stderr.

    ``also_tty`` adds stderr when it is a terminal, for a process run in the
    foreground by hand; a redirected stderr gets nothing, so nothing is logged
    twice into files.
    """
    formatter = logging.Formatter(fmt, defaults=defaults)
    handlers: list[logging.Handler] = []
    if log_file is not None:
        handlers.append(rotating_handler(log_file))
    if log_file is None or (also_tty and sys.stderr.isatty()):
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = handlers
    root.setLevel(logging.INFO)
