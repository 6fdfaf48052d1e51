"""What a process started by a Turnout controller knows about its instance.

The controller puts its own address in the environment of every process it
starts (``TURNOUT_CONTROLLER_ADDRESS``), so user code running in a replica
reaches the instance that runs it with no set-up: ``turnout.get_handle()``,
``turnout.connect()`` and ``turnout.init()`` there connect to it (and never
start a nested instance).

This module is the one place that reads that context. When replicas get
credentials of their own (a data-plane token, never the admin one), they
arrive here too, and callers keep asking only this module.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

CONTROLLER_ADDRESS_ENV = "TURNOUT_CONTROLLER_ADDRESS"


def controller_address() -> str | None:
    """The address of the controller that started this process, or None
    outside a Turnout instance."""
    return os.environ.get(CONTROLLER_ADDRESS_ENV) or None


def publish(address: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """Give the processes started from here on (``environ``) the controller's address."""
    environ[CONTROLLER_ADDRESS_ENV] = address


def without_context(environ: MutableMapping[str, str]) -> None:
    """Drop the context from an environment that starts a new instance: its
    processes belong to that instance, not to the one this process is part of."""
    environ.pop(CONTROLLER_ADDRESS_ENV, None)
