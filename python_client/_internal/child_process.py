"""How Turnout's processes live with each other: dying with a parent or an
owner, memory limits, command lines. How they start each other and report
readiness is ``spawn`` and ``readiness``.

Children given ``--parent-pid`` die with their parent: Linux's
``PR_SET_PDEATHSIG`` delivers SIGTERM when the parent exits, however it exits,
so a SIGKILLed controller leaves no orphans. A ``--durable`` controller does
not pass it: its children outlive it on purpose and the next controller
re-adopts them (see ``turnout.controller.adoption``).

An instance that ``turnout.init()`` started is durable too (its owner restarts
a dead controller), but it must still end with its owner. Its processes find
the owner's pid in ``TURNOUT_OWNER_PID`` and stop themselves when it exits
(``exit_with_owner``), so nothing outlives an owner that died together with
its controller.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import select
import signal
import sys
import threading
import time
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1
# The pid of the process that owns the instance (``turnout.init()``), for
# every process of that instance; unset for ``turnout start``.
OWNER_PID_ENV = "TURNOUT_OWNER_PID"
# How long a process whose owner died may take to stop after its SIGTERM.
OWNER_GONE_GRACE_S = 30.0
_OWNER_POLL_S = 1.0
# Exit status of a replica that ran out of the memory its limit allows; the
# controller names the limit when it reports the replica FAILED.
OUT_OF_MEMORY_EXIT = 86


def set_memory_limit(limit_bytes: int) -> None:
    """Cap this process's data segment (heap and anonymous mappings) at
    ``limit_bytes``: allocations beyond it fail with MemoryError.

    RLIMIT_DATA rather than RLIMIT_AS: address space reserved but never
    written (thread stacks, malloc arenas, gRPC's pools) does not count, so
    the limit is close to the memory actually used. Set by the process
    itself before it loads user code, rather than by ``preexec_fn`` (unsafe
    in a threaded parent) or ``prlimit`` after spawn (the child may already
    have allocated).
    """
    resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))


def memory_limit() -> int | None:
    """The data segment limit of this process in bytes, None if unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    return None if soft == resource.RLIM_INFINITY else soft


def die_with_parent(parent_pid: int) -> None:
    """Arrange SIGTERM for this process when ``parent_pid`` exits.

    Call it first thing in a child. If the parent is already gone (it died
    between fork and this call) the child exits at once.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def exit_with_owner() -> None:
    """SIGTERM this process when the owner named by ``TURNOUT_OWNER_PID`` exits.

    Call it first thing in a child, like ``die_with_parent``. A daemon thread
    waits on a pidfd of the owner (polls where there is none); the SIGTERM runs
    the process's own orderly stop, and if that takes longer than
    ``OWNER_GONE_GRACE_S`` the process exits anyway.
    """
    try:
        owner = int(os.environ.get(OWNER_PID_ENV, ""))
    except ValueError:
        return
    pidfd: int | None = None
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        pidfd = None
    threading.Thread(
        target=_stop_when_gone, args=(owner, pidfd), name="turnout-owner-watch", daemon=True
    ).start()


def _stop_when_gone(owner: int, pidfd: int | None) -> None:
    if pidfd is not None:
        select.select([pidfd], [], [])
    else:
        while True:
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
            time.sleep(_OWNER_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(OWNER_GONE_GRACE_S)
    os._exit(1)


def seconds_arg(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0 (the children's
    timeouts and graces)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def child_argv(module: str, args: Sequence[str]) -> list[str]:
    """Command line that runs ``python -m module`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
