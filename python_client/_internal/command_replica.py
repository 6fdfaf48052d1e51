"""What a command replica (a backend whose source is a command, in any
language) receives from the controller: environment variables, built here
and nowhere else (docs/replica-protocol.md, "Start-up" lists them).

The command's own argv, env and working directory are the user's; these
variables come on top, so that a replica needs no flags Turnout invented.
Credentials travel in a 0600 file named by ``TURNOUT_CREDENTIALS_FILE``,
never in the environment itself; the admin token never reaches a replica.

Example::

    environment(replica_id="b#1", backend="b", config=pb.BackendConfig(),
                ready_fd=5, host="127.0.0.1")["TURNOUT_READY_FD"]  # "5"
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format

from turnout._internal.rpc import TLSConfig
from turnout._internal.tls_options import ENV as TLS_ENV
from turnout.v1 import controller_pb2 as pb

# The descriptor to write the one readiness line on, then close.
READY_FD_ENV = "TURNOUT_READY_FD"
# The host to bind; the replica picks a free port and reports host:port.
HOST_ENV = "TURNOUT_HOST"
# "<backend>#<n>", for logs.
REPLICA_ID_ENV = "TURNOUT_REPLICA_ID"
# The backend's tag.
BACKEND_ENV = "TURNOUT_BACKEND"
# The backend's effective config (every default filled in) as JSON, field
# names as in controller.proto.
BACKEND_CONFIG_ENV = "TURNOUT_BACKEND_CONFIG"
# The user_config JSON text; unset when the backend has none.
USER_CONFIG_ENV = "TURNOUT_USER_CONFIG"
# The 0600 JSON file of tokens the replica accepts; unset = check none.
CREDENTIALS_FILE_ENV = "TURNOUT_CREDENTIALS_FILE"
# The controller's pid, when the replica must end with it (not durable).
PARENT_PID_ENV = "TURNOUT_PARENT_PID"

NAMES = (
    READY_FD_ENV,
    HOST_ENV,
    REPLICA_ID_ENV,
    BACKEND_ENV,
    BACKEND_CONFIG_ENV,
    USER_CONFIG_ENV,
    CREDENTIALS_FILE_ENV,
    PARENT_PID_ENV,
    *TLS_ENV.values(),
)


def environment(
    *,
    replica_id: str,
    backend: str,
    config: pb.BackendConfig,
    ready_fd: int,
    host: str = "127.0.0.1",
    credentials_file: Path | None = None,
    parent_pid: int | None = None,
    tls: TLSConfig | None = None,
) -> dict[str, str]:
    """The variables a command replica is started with."""
    env = {
        READY_FD_ENV: str(ready_fd),
        HOST_ENV: host,
        REPLICA_ID_ENV: replica_id,
        BACKEND_ENV: backend,
        BACKEND_CONFIG_ENV: json_format.MessageToJson(
            config, preserving_proto_field_name=True, indent=None, sort_keys=True
        ),
    }
    if config.HasField("user_config_json"):
        env[USER_CONFIG_ENV] = config.user_config_json
    if credentials_file is not None:
        env[CREDENTIALS_FILE_ENV] = str(credentials_file)
    if parent_pid is not None:
        env[PARENT_PID_ENV] = str(parent_pid)
    if tls is not None:
        for field, name in TLS_ENV.items():
            value = getattr(tls, field)
            if value is not None:
                env[name] = str(value)
    return env
