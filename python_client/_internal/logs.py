"""Log set-up shared by the controller, proxy and replica processes.

Each process writes its own log file through a ``RotatingFileHandler``, so the
process that writes a file is the one that rotates it. A child's stdout and
stderr are *not* that file: they go to a ``<name>.out`` file next to it (what
the interpreter prints when it crashes; a replica's ``print`` output goes to
its log instead, see ``capture_prints``). Were
they the same file, the inherited descriptor would keep writing into the
renamed ``.log.1`` after the first rotation.

Sizes come from the environment, so a test or an operator can change them for
every process of an instance at once:

- ``TURNOUT_LOG_MAX_BYTES``: size at which a log file rotates (default 10 MiB);
- ``TURNOUT_LOG_BACKUPS``: rotated files kept per log (default 5).
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import sys
import threading
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


# A captured line longer than this is logged in pieces (output without
# newlines must not grow a buffer without bound).
MAX_CAPTURED_LINE = 64 * 1024


class LineLogger(io.TextIOBase):
    """A text stream that logs each complete line it is given.

    It stands in for ``sys.stdout`` and ``sys.stderr`` in a replica, so that
    what a handler prints lands in the replica's rotated log, with a time and
    the replica id, instead of growing the ``.out`` file without bound.
    ``fileno()`` is the real descriptor: a library that writes to it directly
    (faulthandler, a child process) still reaches the ``.out`` file.
    """

    def __init__(
        self, logger: logging.Logger, level: int, fileno: int, fallback: int | None = None
    ) -> None:
        super().__init__()
        self._logger = logger
        self._level = level
        self._fileno = fileno
        # Where a write made while logging goes (the raw output file): never
        # ``fileno`` when that is captured into this same logger.
        self._fallback = fileno if fallback is None else fallback
        self._pending = ""
        self._lock = threading.Lock()
        self._inside = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if getattr(self._inside, "logging", False):
            # Written while logging (logging reporting its own failure):
            # straight to the descriptor, or it would come back here forever.
            os.write(self._fallback, text.encode("utf-8", "replace"))
            return len(text)
        with self._lock:
            lines = (self._pending + text).split("\n")
            pending = lines.pop()
            # Output that never ends a line (a progress bar, end="") is
            # logged in pieces rather than held without bound.
            while len(pending) >= MAX_CAPTURED_LINE:
                lines.append(pending[:MAX_CAPTURED_LINE])
                pending = pending[MAX_CAPTURED_LINE:]
            self._pending = pending
        self._log(lines)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            line, self._pending = self._pending, ""
        if line:
            self._log([line])

    def _log(self, lines: list[str]) -> None:
        self._inside.logging = True
        try:
            for line in lines:
                self._logger.log(self._level, "%s", line)
        finally:
            self._inside.logging = False

    def fileno(self) -> int:
        return self._fileno

    def isatty(self) -> bool:
        return False


def capture_prints(prefix: str, *, descriptors: bool = False) -> None:
    """Send ``print`` output and other writes to sys.stdout / sys.stderr to the
    loggers ``<prefix>.stdout`` (INFO) and ``<prefix>.stderr`` (WARNING).

    With ``descriptors``, file descriptors 1 and 2 themselves become pipes
    read by a thread into the same loggers, so that what bypasses
    ``sys.stdout`` (``os.write(1, ...)``, C extensions, a handler's
    subprocess) is rotated too; the raw output file keeps only what was
    written before, and what logging writes about its own failures.
    """
    streams = []
    for fd, stream, level in ((1, "stdout", logging.INFO), (2, "stderr", logging.WARNING)):
        logger = logging.getLogger(f"{prefix}.{stream}")
        fallback = None
        if descriptors:
            fallback = os.dup(fd)
            _capture_descriptor(fd, logger, level)
        streams.append(LineLogger(logger, level, fd, fallback))
    sys.stdout, sys.stderr = streams


def _capture_descriptor(fd: int, logger: logging.Logger, level: int) -> None:
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    threading.Thread(
        target=_pump, args=(read_end, logger, level), name=f"capture fd {fd}", daemon=True
    ).start()


def _pump(fd: int, logger: logging.Logger, level: int) -> None:
    """Log each line read from ``fd`` until every writer closed it."""
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        except OSError:
            return
        if not chunk:
            break
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        while len(pending) > MAX_CAPTURED_LINE:
            lines.append(pending[:MAX_CAPTURED_LINE])
            pending = pending[MAX_CAPTURED_LINE:]
        for line in lines:
            logger.log(level, "%s", line.decode("utf-8", "replace"))
    if pending:
        logger.log(level, "%s", pending.decode("utf-8", "replace"))


def out_path(log_path: Path) -> Path:
    """Where a child's stdout and stderr go: next to its log, never into it."""
    return log_path.with_suffix(".out")


def trim_output_file(path: Path) -> None:
    """Keep a child's raw output file bounded: once it reached the rotation
    size it becomes ``<name>.1`` (replacing the previous one) before the next
    child appends to it."""
    limit = _env_int(MAX_BYTES_ENV, DEFAULT_MAX_BYTES)
    try:
        if limit and path.stat().st_size >= limit:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass
