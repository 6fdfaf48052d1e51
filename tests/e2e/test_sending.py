"""The one sender (turnout._sending) through both of its shells: the HTTP proxy
and Python handles. Each path is run through each shell, against the
session's real instance."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from aiohttp import web
from conftest import Deploy, wait_until

import turnout
from turnout._handle_router import HandleRouter
from turnout._internal import rpc
from turnout._sending import loop_thread, sender
from turnout._sending.controller_link import watch_routes
from turnout._sending.route_table import stable_fraction
from turnout.proxy.app import ProxyState, build_server
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc

SHELLS = ("http", "handle")


def echo(request: Any) -> dict[str, Any]:
    return {"x": request.args.get("x")}


def slow(request: Any) -> dict[str, bool]:
    mark = request.args.get("mark")
    if mark:
        Path(mark).touch()
    time.sleep(float(request.args.get("s", "0")))
    return {"slow": True}


def slow_echo(request: Any) -> dict[str, Any]:
    time.sleep(3)
    return {"x": request.args.get("x")}


@dataclasses.dataclass
class Outcome:
    """What one call through either shell ended with: the answer, or the
    error (its HTTP error name, or the turnout exception's class)."""

    value: Any = None
    error: str = ""


class Shells:
    """Calls through the session's HTTP proxy or a handle, told apart by name."""

    def __init__(self, client: turnout.Client, http_address: str | None = None) -> None:
        self.client = client
        self.http_address = http_address or client.http_address

    def call(
        self, shell: str, endpoint: str, *, timeout: float | None = None, shard_key: str = "",
        **args: str,
    ) -> Outcome:  # fmt: skip
        if shell == "http":
            headers = {}
            if timeout is not None:
                headers["X-Serve-Timeout-Ms"] = str(int(timeout * 1000))
            if shard_key:
                headers["X-Serve-Shard-Key"] = shard_key
            reply = requests.get(
                f"{self.http_address}/{endpoint}", params=args, headers=headers, timeout=60
            )
            if reply.status_code != 200:
                return Outcome(error=reply.json()["error"])
            return Outcome(value=reply.json())
        handle = self.client.get_handle(endpoint)
        if timeout is not None or shard_key:
            handle = handle.options(timeout=timeout, shard_key=shard_key or None)
        try:
            return Outcome(value=handle.remote(**args).result(timeout=60))
        except turnout.TurnoutError as exc:
            return Outcome(error=type(exc).__name__)


@pytest.fixture(scope="module")
def shells(client: turnout.Client) -> Shells:
    return Shells(client)


# What each shell calls the same failure.
OVERLOADED = {"http": "Overloaded", "handle": "OverloadedError"}
DEADLINE = {"http": "GatewayTimeout", "handle": "DeadlineExceededError"}


def _fanout_replica_log(client: turnout.Client, backend: str) -> str:
    return "\n".join(Path(r.log_path).read_text() for r in client.list_replicas(backend))


class SyncFanout:
    """A sync backend that calls another endpoint's handle from many threads."""

    def __init__(self, leaf: Any) -> None:
        self.leaf = leaf
        self.pool = ThreadPoolExecutor(8)

    def __call__(self, request: Any) -> list[Any]:
        n = int(request.args["n"])
        futures = [self.pool.submit(self.one, i) for i in range(n)]
        return [f.result()["x"] for f in futures]

    def one(self, i: int) -> Any:
        return self.leaf.remote(x=str(i)).result(30)


class AsyncFanout:
    """An async backend (on the replica's own grpc.aio loop) awaiting handles."""

    def __init__(self, leaf: Any) -> None:
        self.leaf = leaf

    async def __call__(self, request: Any) -> list[Any]:
        n = int(request.args["n"])
        answers = await asyncio.gather(*(self.leaf.remote(x=str(i)) for i in range(n)))
        return [a["x"] for a in answers]


def test_handles_in_replicas_and_drivers_share_grpc_aio_with_their_loops(
    client: turnout.Client, deploy: Deploy, caplog: pytest.LogCaptureFixture
) -> None:
    # grpc.aio serves all loops of a process from one completion queue
    # (grpc/grpc#25364): handles send on one loop per process, beside the
    # replica's own server loop, and are called from its handler threads and
    # from the loop itself. Every answer must be right and no loop may
    # complain.
    leaf = deploy(echo, config={"num_replicas": 2})
    fanouts = [
        deploy(kind, client.get_handle(leaf.backend), config={"max_concurrent_queries": 8})
        for kind in (SyncFanout, AsyncFanout)
    ]
    expected = [str(i) for i in range(12)]

    def over_http(url: str) -> list[Any]:
        return requests.get(url, params={"n": "12"}, timeout=60).json()  # type: ignore[no-any-return]

    def from_a_thread(x: str) -> Any:
        return client.get_handle(leaf.backend).remote(x=x).result(30)

    async def from_a_loop() -> list[Any]:
        handle = client.get_handle(leaf.backend)
        answers = await asyncio.gather(*(handle.remote(x=str(i)) for i in range(12)))
        return [a["x"] for a in answers]

    with ThreadPoolExecutor(8) as pool:
        through_replicas = [pool.submit(over_http, f.url) for f in fanouts for _ in range(4)]
        from_threads = [pool.submit(from_a_thread, str(i)) for i in range(24)]
        from_loop = asyncio.run(from_a_loop())
        assert [f.result() for f in through_replicas] == [expected] * 8
        assert [f.result()["x"] for f in from_threads] == [str(i) for i in range(24)]
    assert from_loop == expected
    for fanout in fanouts:
        log = _fanout_replica_log(client, fanout.backend)
        assert "BlockingIOError" not in log
        assert "Traceback" not in log
        assert "Exception in callback" not in log
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


@pytest.mark.parametrize("shell", SHELLS)
def test_shadows_are_compared_through_each_shell(
    client: turnout.Client, deploy: Deploy, shells: Shells, shell: str
) -> None:
    primary = deploy(echo)
    same = deploy(echo)
    client.create_backend(f"{primary.backend}-other", slow)
    client.shadow_traffic(primary.backend, same.backend, 1.0)
    client.shadow_traffic(primary.backend, f"{primary.backend}-other", 1.0)
    for i in range(3):
        assert shells.call(shell, primary.backend, x=str(i)) == Outcome({"x": str(i)})

    def compared() -> dict[str, dict[str, int]]:
        return client.endpoint_stats()[primary.backend]["shadows"]  # type: ignore[no-any-return]

    wait_until(lambda: sum(s["matched"] + s["differed"] for s in compared().values()) == 6)
    assert compared() == {
        same.backend: {"sent": 3, "matched": 3, "differed": 0, "failed": 0},
        f"{primary.backend}-other": {"sent": 3, "matched": 0, "differed": 3, "failed": 0},
    }


def test_a_handle_sees_a_traffic_change_as_soon_as_it_returns(
    client: turnout.Client, deploy: Deploy, unique: Callable[[str], str]
) -> None:
    # Handles acknowledge every snapshot they apply, as the proxy does, so an
    # admin call returns only once this process's handles follow it too.
    def one(request: Any) -> int:
        return 1

    def two(request: Any) -> int:
        return 2

    name = unique("flip")
    client.create_backend(f"{name}-1", one)
    client.create_backend(f"{name}-2", two)
    client.create_endpoint(name, f"{name}-1")
    handle = client.get_handle(name)
    assert handle.remote().result(timeout=30) == 1
    for flip in range(6):
        backend = 2 if flip % 2 == 0 else 1
        client.set_traffic(name, {f"{name}-{backend}": 1.0})
        assert handle.remote().result(timeout=30) == backend


@pytest.mark.parametrize("shell", SHELLS)
def test_queue_expiry_and_deadlines_through_each_shell(
    client: turnout.Client, deploy: Deploy, shells: Shells, shell: str, tmp_path: Path
) -> None:
    target = deploy(slow, config={"max_concurrent_queries": 1, "queue_timeout": 0.3})
    name = target.backend
    # A call past its deadline while it runs.
    assert shells.call(shell, name, timeout=0.3, s="2").error == DEADLINE[shell]
    # One call holds the only slot ...
    mark = tmp_path / "started"
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(shells.call, shell, name, mark=str(mark), s="3")
        wait_until(mark.exists)
        # ... so the next waits in the queue: until its deadline, or the
        # backend's queue_timeout.
        assert shells.call(shell, name, timeout=0.2).error == DEADLINE[shell]
        assert shells.call(shell, name).error == OVERLOADED[shell]
        assert holder.result() == Outcome({"slow": True})


@pytest.mark.parametrize("shell", SHELLS)
def test_a_queue_timeout_of_0_refuses_at_once_through_each_shell(
    client: turnout.Client, deploy: Deploy, shells: Shells, shell: str, tmp_path: Path
) -> None:
    # 0 s is a value of its own (fail at once when every replica is full),
    # not "unset" (the default, 30 s): it must reach both senders as 0.
    target = deploy(slow, config={"max_concurrent_queries": 1, "queue_timeout": 0})
    name = target.backend
    assert client.get_backend_config(name).queue_timeout == 0
    mark = tmp_path / "started"
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(shells.call, shell, name, mark=str(mark), s="6")
        wait_until(mark.exists)
        # The only slot is taken: refused, not queued until its own deadline
        # (which a sender that took 0 for the default would wait out).
        assert shells.call(shell, name, timeout=4).error == OVERLOADED[shell]
        assert holder.result() == Outcome({"slow": True})


# ---- paths that need a replica the controller does not list -------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _router_service(client: turnout.Client) -> grpc.Channel:
    address = client.controller_address
    security = dataclasses.replace(rpc.security_for(address), token=client.token)
    return rpc.channel(address, security)


def _current_snapshot(client: turnout.Client) -> pb.RoutingSnapshot:
    with _router_service(client) as channel:
        stub = controller_pb2_grpc.RouterServiceStub(channel)
        stream = stub.WatchRoutes(pb.WatchRoutesRequest())
        snapshot = next(iter(stream)).snapshot
        stream.cancel()
    return snapshot


@dataclasses.dataclass
class InProcess:
    """A proxy in this process, sending on the handles' loop (one grpc.aio
    loop per process), and this process's handle router: both senders here,
    so a test can change their constants and hand them a snapshot."""

    http_address: str
    proxy: ProxyState
    handles: HandleRouter

    def apply(self, snapshot: pb.RoutingSnapshot) -> None:
        async def apply_both() -> None:
            self.proxy.apply(snapshot)
            self.handles._sender.apply(snapshot)

        loop_thread.shared().submit(apply_both()).result(10)

    def sender(self, shell: str) -> sender.Sender[Any]:
        return self.proxy.sender if shell == "http" else self.handles._sender


@pytest.fixture(scope="module")
def in_process(client: turnout.Client) -> Iterator[InProcess]:
    address = client.controller_address
    security = dataclasses.replace(rpc.security_for(address), token=client.token)
    thread = loop_thread.shared()
    with _router_service(client) as channel:
        stub = controller_pb2_grpc.RouterServiceStub(channel)
        data_token = stub.GetDataToken(pb.GetDataTokenRequest(), timeout=10).token

    async def start() -> tuple[ProxyState, web.ServerRunner]:
        # Replicas are shown the data token, the controller the client's.
        state = ProxyState(security=dataclasses.replace(security, token=data_token or None))
        runner = web.ServerRunner(build_server(state))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        # Named, so admin calls wait for it as for the real proxy.
        state.spawn(watch_routes(address, state.apply, f"test-proxy-{id(state)}", security))
        await state.first_snapshot.wait()
        return state, runner

    state, runner = thread.submit(start()).result(30)
    host, port = runner.addresses[0][:2]
    handles = HandleRouter.for_address(address, client.token)
    yield InProcess(f"http://{host}:{port}", state, handles)

    async def stop() -> None:
        await runner.cleanup()
        await state.close()

    thread.submit(stop()).result(30)


def test_a_call_never_delivered_is_retried_on_another_replica_through_each_shell(
    client: turnout.Client,
    deploy: Deploy,
    in_process: InProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=sender.__name__)
    target = deploy(echo)
    wait_until(lambda: in_process.proxy.router.table.endpoint(target.backend) is not None)
    snapshot = _current_snapshot(client)
    (targets,) = [b for b in snapshot.backends if b.tag == target.backend]
    # A replica that went away before the snapshot said so: nothing listens.
    targets.replicas.add(replica_id="gone", address=f"127.0.0.1:{_closed_port()}")
    live = targets.replicas[0].replica_id
    # A key the gone replica wins, so that each call goes there first.
    key = next(
        k
        for k in (f"k{i}" for i in range(1000))
        if stable_fraction(k, target.backend, "gone") > stable_fraction(k, target.backend, live)
    )
    in_process.apply(snapshot)
    here = Shells(client, in_process.http_address)
    for shell in SHELLS:
        assert here.call(shell, target.backend, shard_key=key, x="1") == Outcome({"x": "1"})
    for shell in SHELLS:
        (counts,) = [c for e, c in in_process.sender(shell).stats.items() if e == target.backend]
        assert (counts.requests_by_backend, counts.errors) == ({target.backend: 1}, 0)
    retried = [r for r in caplog.records if "unreachable; retrying" in r.getMessage()]
    assert [r.getMessage().split()[1] for r in retried] == ["gone", "gone"]


def test_shadows_beyond_the_in_flight_cap_are_not_sent_through_each_shell(
    client: turnout.Client,
    deploy: Deploy,
    in_process: InProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary = deploy(echo)
    shadow = deploy(slow_echo)
    client.shadow_traffic(primary.backend, shadow.backend, 1.0)
    monkeypatch.setattr(sender, "MAX_SHADOWS_IN_FLIGHT", 1)
    here = Shells(client, in_process.http_address)
    for shell in SHELLS:
        # The first copy is still in flight (3 s) while the next two arrive.
        with ThreadPoolExecutor(3) as pool:
            calls = [pool.submit(here.call, shell, primary.backend, x="1") for _ in range(3)]
            assert [c.result() for c in calls] == [Outcome({"x": "1"})] * 3

    def shadows(shell: str) -> dict[str, int]:
        for endpoint, counts in in_process.sender(shell).stats.items():
            if endpoint == primary.backend:
                return dict(vars(counts.shadows[shadow.backend]))
        return {}

    for shell in SHELLS:
        wait_until(lambda shell=shell: shadows(shell).get("matched", 0) == 1)  # type: ignore[misc]
        assert shadows(shell) == {"sent": 3, "matched": 1, "differed": 0, "failed": 2}
