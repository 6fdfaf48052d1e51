"""``turnout.Command``: a backend whose replicas are a program in any language.

The program serves ``turnout.v1.ReplicaService`` itself and reports
readiness as docs/replica-protocol.md describes; the controller starts,
health-checks, restarts and drains it as it does a Python replica.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from turnout._internal import validation
from turnout.v1 import controller_pb2 as pb


@dataclass(frozen=True)
class Command:
    """A replica program: ``argv`` run in ``cwd`` with ``env`` added.

    ``cwd`` is made absolute here (relative to this process's working
    directory); None = the controller's. ``ready_timeout`` (seconds; None =
    the default, 120) bounds how long the program may take to report
    readiness. What the program receives (where to listen, the readiness
    descriptor, its replica id, the backend config, the data-plane
    credentials) is listed in docs/replica-protocol.md.

    Example::

        import turnout
        turnout.create_backend(
            "node", turnout.Command(["node", "replica.js"], cwd="examples/node-replica")
        )
    """

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | os.PathLike[str] | None = None
    ready_timeout: float | None = None

    def __post_init__(self) -> None:
        argv: Any = self.argv
        if isinstance(argv, str | bytes) or not isinstance(argv, Sequence):
            raise TypeError(
                "argv must be a list of str, e.g. ['node', 'replica.js'], "
                f"got {type(argv).__name__}"
            )
        if not all(isinstance(arg, str) for arg in argv):
            raise TypeError("each argument of argv must be a str")
        object.__setattr__(self, "argv", tuple(argv))
        env: Any = self.env if self.env is not None else {}
        if not validation.is_str_map(env):
            raise TypeError("env must map str names to str values")
        object.__setattr__(self, "env", dict(env))
        if self.cwd is not None:
            if not isinstance(self.cwd, str | os.PathLike):
                raise TypeError(f"cwd must be a path, got {type(self.cwd).__name__}")
            object.__setattr__(self, "cwd", os.path.abspath(os.fspath(self.cwd)))
        timeout: Any = self.ready_timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float)
        ):
            raise TypeError(
                f"ready_timeout must be a number of seconds, got {type(timeout).__name__}"
            )

    def to_proto(self) -> pb.Command:
        message = pb.Command(argv=list(self.argv), env=dict(self.env), cwd=str(self.cwd or ""))
        if self.ready_timeout is not None:
            message.ready_timeout = float(self.ready_timeout)
        return message

    @classmethod
    def from_proto(cls, message: pb.Command) -> Command:
        return cls(
            argv=list(message.argv),
            env=dict(message.env),
            cwd=message.cwd or None,
            ready_timeout=message.ready_timeout if message.HasField("ready_timeout") else None,
        )
