"""Authentication: every gRPC method of the controller and of every replica asks
for a token, and each principal gets only its roles (real grpcurl, real processes)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from conftest import Deploy, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_cli import Home
from test_grpcurl import run_grpcurl

import turnout
from turnout._handle_router import HandleRouter
from turnout._internal import rpc
from turnout.controller.launchers.local import child_environment
from turnout.handle import EndpointHandle
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc, http_pb2, replica_pb2, replica_pb2_grpc

WRONG = "0" * 64
GET_DATA_TOKEN = "turnout.v1.RouterService/GetDataToken"


def environment(request: Any) -> dict[str, str]:
    return dict(os.environ)


def admin_from_inside(request: Any) -> str:
    """User code in a replica: reads and handles work, admin calls do not."""
    client = turnout.connect()
    assert client.list_backends()
    try:
        client.delete_endpoint("anything")
    except turnout.PermissionDeniedError as exc:
        return f"denied: {exc}"
    return "allowed"


def code_of(result: subprocess.CompletedProcess[str]) -> str:
    """The status grpcurl reports ("OK" when it succeeded)."""
    if result.returncode == 0:
        return "OK"
    for line in result.stderr.splitlines():
        if "Code:" in line:
            return line.split("Code:")[1].strip()
        if "code = " in line:
            return line.split("code = ")[1].split()[0]
    return result.stderr


def instance_dir(client: turnout.Client) -> Path:
    return Path(client.log_dir).parent


def principal_token(client: turnout.Client, principal: str) -> str:
    """The token the controller gave a child (from its 0600 credentials file)."""
    path = instance_dir(client) / "run" / f"credentials-{principal}.json"
    token: str = json.loads(path.read_text())["token"]
    return token


def test_every_kind_of_call_needs_the_right_token(client: turnout.Client, deploy: Deploy) -> None:
    address = client.controller_address
    # What handles of an admin client present to replicas: read + router + data.
    handle = handle_token(client)
    assert handle != client.token
    proxy = principal_token(client, "proxy")  # router + data

    def code(method: str, token: str | None, **kwargs: Any) -> str:
        # Reflection (to find the method) with the admin token; the call with ``token``.
        kwargs.setdefault("reflect_token", client.token)
        return code_of(run_grpcurl(address, method, token=token, **kwargs))

    admin_unary = "turnout.v1.ControllerService/DeleteEndpoint"
    read_unary = "turnout.v1.ControllerService/ListBackends"
    for method in (admin_unary, read_unary, "turnout.v1.RouterService/AckRoutes"):
        assert code(method, None) == "Unauthenticated"
        assert code(method, WRONG) == "Unauthenticated"
    assert code(admin_unary, handle, data={"name": "nothing-here"}) == "PermissionDenied"
    assert code(admin_unary, client.token, data={"name": "nothing-here"}) == "NotFound"
    assert code(read_unary, handle) == "OK"
    assert code(read_unary, proxy) == "PermissionDenied"
    # A replica's log is read-role: past the check, an unknown id is NotFound.
    log = "turnout.v1.ControllerService/GetReplicaLog"
    assert code(log, handle, data={"replica_id": "none#1"}) == "NotFound"
    assert code(log, proxy, data={"replica_id": "none#1"}) == "PermissionDenied"
    # Server streaming: the routing stream (a router's); reflection (bidi) needs read.
    watch = "turnout.v1.RouterService/WatchRoutes"
    assert code(watch, None) == "Unauthenticated"
    assert code(watch, WRONG) == "Unauthenticated"
    streamed = run_grpcurl(address, watch, token=handle, flags=("-max-time", "3"))
    assert '"snapshot"' in streamed.stdout, streamed.stderr
    assert code("list", None, reflect_token=None) == "Unauthenticated"
    assert code("list", None, reflect_token=proxy) == "PermissionDenied"
    assert code("grpc.health.v1.Health/Check", None) == "OK"  # probes stay open
    rejected = run_grpcurl(address, admin_unary, token=None, reflect_token=client.token)
    assert "authorization: Bearer" in rejected.stderr and "turnout token" in rejected.stderr

    # A replica: unary and bidi streaming; it knows no admin token at all.
    served = deploy(environment)
    (replica,) = client.list_replicas(served.backend)
    reconfigure = "turnout.v1.ReplicaService/Reconfigure"
    for token in (None, WRONG, client.token):
        refused = run_grpcurl(replica.address, reconfigure, token=token, reflect_token=handle)
        assert code_of(refused) == "Unauthenticated"
    for token in (handle, proxy):  # only the controller's own token reconfigures
        refused = run_grpcurl(replica.address, reconfigure, token=token, data={})
        assert code_of(refused) == "PermissionDenied"
    call = replica_pb2.HandleRequest(
        request_id="r1", http=http_pb2.HttpRequest(method="GET", scheme="http", path="/")
    )
    for token in (None, WRONG, client.token):
        with rpc.channel(replica.address, rpc.Security(token=token)) as channel:
            stream = replica_pb2_grpc.ReplicaServiceStub(channel).HandleStream(
                iter([replica_pb2.HandleStreamRequest(calls=[replica_pb2.StreamCall(id=1)])]),
                timeout=10,
            )
            with pytest.raises(grpc.RpcError) as failed:
                next(stream)
            assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for token in (handle, proxy):
        with rpc.channel(replica.address, rpc.Security(token=token)) as channel:
            answer = replica_pb2_grpc.ReplicaServiceStub(channel).Handle(call, timeout=10)
            assert answer.http.status == 200


def handle_token(client: turnout.Client) -> str:
    """What handles of ``client`` present (the replicas' user code holds the same roles)."""
    given = run_grpcurl(client.controller_address, GET_DATA_TOKEN, token=client.token)
    token: str = json.loads(given.stdout)["token"]
    return token


class Remembers:
    def __init__(self) -> None:
        self.config: Any = None

    def reconfigure(self, config: Any) -> None:
        self.config = config

    def __call__(self, request: Any) -> Any:
        return {"config": self.config}


def test_user_code_cannot_reconfigure_replicas(client: turnout.Client, deploy: Deploy) -> None:
    served = deploy(Remembers, config={"user_config": {"owner": "me"}})
    (replica,) = client.list_replicas(served.backend)
    handle = handle_token(client)
    forged = {"user_config_json": json.dumps({"owner": "attacker"}), "max_concurrent_queries": 1}
    refused = run_grpcurl(
        replica.address, "turnout.v1.ReplicaService/Reconfigure", token=handle, data=forged
    )
    assert code_of(refused) == "PermissionDenied", refused.stderr
    assert requests.get(served.url, timeout=30).json() == {"config": {"owner": "me"}}
    # The controller's own calls still reconfigure it.
    client.update_backend_config(served.backend, {"user_config": {"owner": "you"}})
    assert requests.get(served.url, timeout=30).json() == {"config": {"owner": "you"}}


def echo(request: Any) -> str:
    return "here"


def test_user_code_cannot_speak_for_the_proxy(client: turnout.Client, unique: Any) -> None:
    handle = handle_token(client)
    name = unique("prompt")
    client.create_backend(name, echo)
    with (
        rpc.channel(client.controller_address, rpc.Security(token=handle)) as user,
        rpc.channel(client.controller_address, rpc.Security(token=client.token)) as admin,
    ):
        router = controller_pb2_grpc.RouterServiceStub(user)
        with pytest.raises(grpc.RpcError) as refused:
            router.AckRoutes(pb.AckRoutesRequest(subscriber_id="proxy", version=2**62), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # A router that never acknowledges: admin calls must not wait for it
        # (they wait up to 10 s for routers; this one gets 5 s).
        stalled = router.WatchRoutes(pb.WatchRoutesRequest(subscriber_id="stall"), timeout=60)
        try:
            assert next(stalled).snapshot.version > 0
            request = pb.CreateEndpointRequest(name=name, backend=name, route=f"/{name}")
            controller_pb2_grpc.ControllerServiceStub(admin).CreateEndpoint(request, timeout=5)
        finally:
            stalled.cancel()
    # It answered once the real proxy applied the change: the route serves at once.
    assert requests.get(f"{client.http_address}/{name}", timeout=30).text == "here"


def test_handles_of_clients_with_other_tokens_each_present_their_own(
    client: turnout.Client, deploy: Deploy
) -> None:
    served = deploy(echo)
    address = client.controller_address
    # A token rotated out (or mistyped), used first in this process: its
    # handles get nothing, not even routes, so the call waits out its deadline ...
    stale = EndpointHandle(address, served.backend, token=WRONG).options(timeout=3)
    with pytest.raises(turnout.DeadlineExceededError):
        stale.remote().result(30)
    # ... and does not turn away the admin client's handles, nor they it.
    assert client.get_handle(served.backend).remote().result(30) == "here"
    with pytest.raises(turnout.DeadlineExceededError):
        stale.remote().result(30)
    # A second client with the handle role's token: a router of its own, and
    # the same one for every handle with that token.
    remembered = rpc.security_for(address)
    try:
        reader = turnout.Client(address, token=handle_token(client))
        assert reader.get_handle(served.backend).remote().result(30) == "here"
        with pytest.raises(turnout.PermissionDeniedError):
            reader.delete_endpoint(served.backend)
    finally:
        # A Client remembers how it reached the address, for handles made
        # without a token: the session's other tests expect the admin's.
        rpc.remember(address, remembered)
    routers = {
        token: HandleRouter.for_address(address, token)
        for token in (client.token, reader.token, WRONG)
    }
    assert len({id(r) for r in routers.values()}) == 3
    assert HandleRouter.for_address(address, reader.token) is routers[reader.token]


def test_replicas_never_see_the_admin_token(client: turnout.Client, deploy: Deploy) -> None:
    assert client.token
    served = deploy(environment)
    seen = requests.get(served.url, timeout=30).json()
    assert not [name for name, value in seen.items() if client.token in value]
    assert "TURNOUT_TOKEN" not in seen and "TURNOUT_TOKEN_FILE" not in seen
    # Handles inside a backend work, with the replica's own (non-admin) credentials.
    inside = deploy(admin_from_inside)
    answer = requests.get(inside.url, timeout=30).text
    assert answer.startswith("denied:") and "admin" in answer, answer
    # No log of the instance holds the token.
    logs = [p for p in Path(client.log_dir).rglob("*") if p.is_file()]
    assert logs
    assert not [p for p in logs if client.token in p.read_text(errors="replace")]


def test_child_environment_passes_only_what_children_need() -> None:
    env = child_environment(
        {
            "PATH": "/bin",
            "LC_ALL": "C",
            "TURNOUT_LOG_MAX_BYTES": "10",
            "TURNOUT_TOKEN": "secret",
            "TURNOUT_TOKEN_FILE": "/x",
            "AWS_SECRET_ACCESS_KEY": "secret",
        },
        {"CUDA_VISIBLE_DEVICES": "1", "MY_SETTING": "on"},
    )
    assert {"PATH", "LC_ALL", "TURNOUT_LOG_MAX_BYTES", "MY_SETTING"} <= set(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert not {"TURNOUT_TOKEN", "TURNOUT_TOKEN_FILE", "AWS_SECRET_ACCESS_KEY"} & set(env)


def test_started_instance_token_file_rotation_and_refusal(tmp_path: Path) -> None:
    from test_cli import make_home

    home: Home = make_home(tmp_path)
    try:
        started = home.start_detached()
        token_file = home.data_dir / "token"
        assert str(token_file) in started.stdout
        token = home.run("token").stdout.strip()
        assert len(token) == 64 and token not in started.stdout + started.stderr
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(home.data_dir.stat().st_mode) == 0o700
        home.run("deploy", home.write("app.yaml", APP_YAML))
        assert requests.get(f"{home.http}/hi?word=hi", timeout=30).text == "hi"

        rotated = home.run("token", "--rotate").stdout.strip()
        assert rotated != token and token_file.read_text() == rotated
        old = code_of(run_grpcurl(home.address, READ, token=token))
        assert old == "Unauthenticated"
        assert code_of(run_grpcurl(home.address, READ, token=rotated)) == "OK"
        assert "hi" in home.run("status").stdout  # the CLI reads the new file
        # The proxy's own credentials are untouched: it still follows changes.
        home.run("deploy", home.write("app.yaml", APP_YAML.replace("/hi", "/hey")))
        wait_until(lambda: requests.get(f"{home.http}/hey", timeout=30).status_code == 200)
        home.run("stop")

        token_file.chmod(0o640)
        refused = home.run("start", "--detach", *home.ports(), check=False)
        assert refused.returncode != 0
        assert "chmod 600" in refused.stdout + refused.stderr
    finally:
        home.clean_up()


def test_owned_instance_hands_its_token_to_the_client(client: turnout.Client) -> None:
    token_file = instance_dir(client) / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert client.token == token_file.read_text()
    code = (
        "import turnout, sys\n"
        "c = turnout.Client(sys.argv[1], token=sys.argv[2])\n"
        "print(len(c.list_backends()) >= 0)\n"
        "try:\n"
        "    turnout.Client(sys.argv[1], token='0' * 64)\n"
        "except turnout.UnauthenticatedError as exc:\n"
        "    print('refused', 'TURNOUT_TOKEN' in str(exc))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_TOKEN")}
    out = subprocess.run(
        [sys.executable, "-c", code, client.controller_address, client.token or ""],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.stdout.split() == ["True", "refused", "True"], out.stderr


READ = "turnout.v1.ControllerService/ListBackends"
APP_YAML = """\
backends:
  hi: {import_path: cli_app:echo}
endpoints:
  hi: {route: /hi, backend: hi}
"""


def test_no_environment_turns_a_replicas_token_check_off(
    client: turnout.Client, unique: Any
) -> None:
    # A backend's own env reaches its replicas; no value of it may open them to
    # callers without a token (a bench-only switch once did).
    name = unique("opened")
    client.create_backend(
        name, environment, replica_options={"env": {"TURNOUT_BENCH_NO_TOKEN_CHECK": "1"}}
    )
    (replica,) = client.list_replicas(name)
    call = replica_pb2.HandleRequest(
        request_id="r1", http=http_pb2.HttpRequest(method="GET", scheme="http", path="/")
    )
    with rpc.channel(replica.address, rpc.Security(token=None)) as channel:
        with pytest.raises(grpc.RpcError) as failed:
            replica_pb2_grpc.ReplicaServiceStub(channel).Handle(call, timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    client.delete_backend(name)


class CountsChecks:
    """Counts its check_health() calls and answers with the count."""

    def __init__(self) -> None:
        self.checks = 0

    def check_health(self) -> None:
        self.checks += 1

    def __call__(self, request: Any) -> int:
        return self.checks


def test_a_health_probe_without_a_token_does_not_run_the_backends_check(
    client: turnout.Client, deploy: Deploy
) -> None:
    # Health stays open for probes, but only a caller with a token makes the
    # replica run user code: anyone else gets the last result.
    served = deploy(CountsChecks, config={"health_check_period": 60})
    (replica,) = client.list_replicas(served.backend)
    health = health_pb2.HealthCheckRequest(service="turnout.v1.ReplicaService")
    before = requests.get(served.url, timeout=10).json()
    with rpc.channel(replica.address, rpc.Security(token=None)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(20):
            status = stub.Check(health, timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    assert requests.get(served.url, timeout=10).json() - before < 5
    with rpc.channel(replica.address, rpc.Security(token=handle_token(client))) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(3):
            stub.Check(health, timeout=10)
    assert requests.get(served.url, timeout=10).json() - before >= 3
