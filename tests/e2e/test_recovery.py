"""A durable instance survives its own parts dying: real processes, real SIGKILLs.

Each test runs ``python -m turnout.controller --durable`` on a state file and a
fixed port, kills the controller (and the proxy, and replicas) with SIGKILL,
starts a new controller on the same state and port, and checks that serving
never stopped and that every acknowledged change is still there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from conftest import Deploy, processes_mentioning, wait_until

import turnout
from turnout.errors import NotRunningError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Durable:
    """One durable instance in ``tmp_path``: a controller we can kill and restart."""

    def __init__(self, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.dir = tmp_path / "instance"
        self.state = tmp_path / "state.db"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.extra = list(extra)
        self.env = {**os.environ, **(env or {})}
        self.controllers: list[subprocess.Popen[bytes]] = []

    def start(self) -> turnout.Client:
        argv = [sys.executable, "-m", "turnout.controller", "--durable"]
        argv += ["--state", str(self.state), "--port", str(self.port), "--http-port", "0"]
        argv += ["--instance-dir", str(self.dir), *self.extra]
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "controller.out").open("ab") as out:
            self.controllers.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=self.env,
                    start_new_session=True,
                )
            )
        return self.client()

    def client(self) -> turnout.Client:
        """A client once the controller serves and its proxy is up."""
        deadline = time.monotonic() + 60
        while True:
            try:
                # The controller creates its admin token in the instance dir.
                client = turnout.Client(self.address, token_file=self.dir / "token")
            except (NotRunningError, turnout.TokenFileError):
                client = None
            if client is not None and client.http_address:
                return client
            assert self.controllers[-1].poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.1)

    def kill_controller(self) -> None:
        controller = self.controllers[-1]
        controller.send_signal(signal.SIGKILL)
        controller.wait()

    def proxy_pid(self) -> int:
        (pid,) = processes_mentioning(f"turnout.proxy --controller {self.address}")
        return pid

    def log(self) -> str:
        path = self.dir / "logs" / "controller.log"
        return path.read_text() if path.exists() else "(no controller log)"

    def cleanup(self) -> None:
        for controller in self.controllers:
            if controller.poll() is None:
                controller.kill()
            controller.wait()
        # Proxy and replicas name the instance directory (their log files).
        for pid in processes_mentioning(str(self.dir)):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not processes_mentioning(str(self.dir)), timeout=10)


MakeDurable = Callable[..., Durable]


@pytest.fixture
def make_durable(tmp_path: Path) -> Iterator[MakeDurable]:
    """Durable instances with extra controller flags or environment, all
    killed at the end of the test whatever happened."""
    made: list[Durable] = []

    def make(*extra: str, env: dict[str, str] | None = None) -> Durable:
        made.append(Durable(tmp_path / f"instance-{len(made)}", *extra, env=env))
        return made[-1]

    try:
        yield make
    finally:
        for instance in made:
            instance.cleanup()


@pytest.fixture
def durable(make_durable: MakeDurable) -> Durable:
    return make_durable()


class Traffic:
    """GETs one URL in a loop from a thread; keeps the answers and the failures."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    reply = session.get(self.url, timeout=10)
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))
                    time.sleep(0.05)
                    continue
                if reply.status_code == 200:
                    self.answers.append(reply.text)
                else:
                    self.failures.append(f"{reply.status_code} {reply.text}")
                time.sleep(0.005)

    def more(self, count: int = 20) -> None:
        """Wait until ``count`` more requests were answered."""
        goal = len(self.answers) + count
        wait_until(lambda: len(self.answers) >= goal, timeout=30)


def pids(client: turnout.Client, backend: str) -> dict[str, int]:
    return {r.replica_id: r.pid for r in client.list_replicas(backend) if r.state == "RUNNING"}


def test_controller_sigkill_mid_traffic_loses_no_request_and_readopts(durable: Durable) -> None:
    client = durable.start()
    client.create_backend(
        "a",
        lambda request: str(os.getpid()),
        config={"num_replicas": 2},
        replica_options={"num_cpus": 1},
    )
    client.create_endpoint("e", "a", route="/e")
    before = client.list_replicas("a")
    proxy = durable.proxy_pid()
    with Traffic(client.http_address + "/e") as traffic:
        traffic.more()
        durable.kill_controller()
        # Served while no controller runs at all.
        traffic.more()
        client = durable.start()
        traffic.more()
    assert traffic.failures == []
    assert set(traffic.answers) <= {str(r.pid) for r in before}
    after = client.list_replicas("a")
    assert [(r.replica_id, r.pid, r.cpus, r.log_path) for r in after] == [
        (r.replica_id, r.pid, r.cpus, r.log_path) for r in before
    ]
    assert durable.proxy_pid() == proxy
    # The adopted proxy follows the new controller: new routes and traffic.
    client.create_backend("b", lambda request: "b")
    client.create_endpoint("f", "b", route="/f")
    assert requests.get(client.http_address + "/f", timeout=10).text == "b"
    client.set_traffic("e", {"b": 1.0})
    assert requests.get(client.http_address + "/e", timeout=10).text == "b"
    # Adopted replicas are stopped like the controller's own (not its children now).
    client.delete_backend("a")
    assert not any(processes_mentioning(f"--replica-id {r.replica_id} ") for r in before)


def test_a_restarted_controller_readopts_a_command_replica(
    durable: Durable, node_replica: Path
) -> None:
    client = durable.start()
    client.create_backend("node", turnout.Command(["node", "replica.js"], cwd=node_replica))
    client.create_endpoint("node", "node", route="/node", methods=["POST"])
    [before] = client.list_replicas("node")
    try:
        durable.kill_controller()
        client = durable.start()
        [after] = client.list_replicas("node")
        assert (after.state, after.pid) == ("RUNNING", before.pid)
        reply = requests.post(client.http_address + "/node", data=b"still here", timeout=10)
        assert reply.content == b"still here"
        # Stopped like the controller's own, though it is not its child now.
        client.delete_endpoint("node")
        client.delete_backend("node")
        wait_until(lambda: not Path(f"/proc/{before.pid}").exists(), timeout=10)
    finally:
        # Its command line does not name the instance's folder, which the
        # fixture's clean-up looks for.
        with contextlib.suppress(ProcessLookupError):
            os.kill(before.pid, signal.SIGKILL)


Op = tuple[str, str, str | None]


def answer(tag: str) -> Callable[[object], str]:
    return lambda request: tag


def test_controller_sigkill_mid_admin_calls_keeps_every_acknowledged_change(
    durable: Durable,
) -> None:
    client = durable.start()
    # Each op changes desired state; the model is what it should be after it.
    ops: list[Op] = []
    for i in range(6):
        ops.append(("backend", f"b{i}", None))
        ops.append(("endpoint", f"e{i}", f"b{i}"))
        if i:
            ops.append(("traffic", "e0", f"b{i}"))
    acked: list[Op] = []
    in_flight: list[Op] = []

    def admin() -> None:
        for op in ops:
            in_flight[:] = [op]
            kind, name, target = op
            try:
                if kind == "backend":
                    client.create_backend(name, answer(name))
                elif kind == "endpoint":
                    client.create_endpoint(name, target, route=f"/{name}")
                else:
                    assert target is not None
                    client.set_traffic(name, {target: 1.0})
            except Exception:  # the controller died under the call (UNAVAILABLE)
                return
            acked.append(op)
            in_flight.clear()

    thread = threading.Thread(target=admin, daemon=True)
    thread.start()
    # Kill while the 6th change, a create_backend, is starting its replica.
    wait_until(lambda: len(acked) >= 5, timeout=60)
    time.sleep(0.3)
    durable.kill_controller()
    thread.join(60)
    assert in_flight, "the kill should have caught a change in flight"

    def model(changes: list[Op]) -> tuple[set[str], dict[str, str]]:
        backends: set[str] = set()
        endpoints: dict[str, str] = {}
        for kind, name, target in changes:
            if kind == "backend":
                backends.add(name)
            else:
                assert target is not None
                endpoints[name] = target
        return backends, endpoints

    client = durable.start()
    found = (
        set(client.list_backends()),
        {name: next(iter(e["traffic"])) for name, e in client.list_endpoints().items()},
    )
    # Acknowledged changes are all there; the one in flight fully or not at all.
    assert found in (model(acked), model(acked + in_flight))
    backends, endpoints = found
    for name, target in endpoints.items():
        reply = requests.get(f"{client.http_address}/{name}", timeout=10)
        assert reply.text == target
    for tag in backends:
        wait_until(lambda t=tag: len(pids(client, t)) == 1)  # type: ignore[misc]
    # Nothing is left of a backend that was not created.
    for i in range(6):
        if f"b{i}" not in backends:
            assert processes_mentioning(f"--replica-id b{i}#") == []


def test_kill_controller_proxy_and_replica_in_turn(durable: Durable) -> None:
    client = durable.start()
    client.create_backend("a", lambda request: "a", config={"num_replicas": 2})
    client.create_endpoint("e", "a", route="/e")
    url = client.http_address + "/e"
    with Traffic(url) as traffic:
        traffic.more()
        durable.kill_controller()
        traffic.more()
        client = durable.start()
        traffic.more()
        assert traffic.failures == []

        # The proxy dies: the (new) controller restarts it on the same port.
        old_proxy = durable.proxy_pid()
        os.kill(old_proxy, signal.SIGKILL)
        proxies = f"turnout.proxy --controller {durable.address}"
        wait_until(lambda: bool(set(processes_mentioning(proxies)) - {old_proxy}))
        traffic.more()
        assert durable.client().http_address + "/e" == url

        # A replica dies: it is replaced and serving goes on.
        victim = client.list_replicas("a")[0].pid
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(pids(client, "a")) == 2 and victim not in pids(client, "a").values())
        traffic.more()
    client.create_backend("c", lambda request: "c")
    client.set_traffic("e", {"c": 1.0})
    assert requests.get(url, timeout=10).text == "c"


def test_replica_and_proxy_that_died_while_the_controller_was_down_are_replaced(
    durable: Durable,
) -> None:
    client = durable.start()
    client.create_backend("a", lambda request: str(os.getpid()), config={"num_replicas": 2})
    client.create_endpoint("e", "a", route="/e")
    survivor, victim = client.list_replicas("a")
    http_address, proxy = client.http_address, durable.proxy_pid()
    durable.kill_controller()
    os.kill(victim.pid, signal.SIGKILL)
    os.kill(proxy, signal.SIGKILL)
    wait_until(lambda: not processes_mentioning(f"--replica-id {victim.replica_id} "))
    wait_until(lambda: not processes_mentioning(f"turnout.proxy --controller {durable.address}"))
    client = durable.start()
    # A new proxy, on the port the old one had (the controller was given port 0).
    assert client.http_address == http_address
    assert durable.proxy_pid() != proxy
    wait_until(lambda: len(pids(client, "a")) == 2)
    now = pids(client, "a")
    assert now[survivor.replica_id] == survivor.pid
    assert victim.pid not in now.values()
    answers = {requests.get(client.http_address + "/e", timeout=10).text for _ in range(20)}
    assert answers <= {str(pid) for pid in now.values()}


def test_adopted_replicas_keep_their_gpus(make_durable: MakeDurable) -> None:
    # Two GPUs as far as the controller knows (no real GPU needed).
    instance = make_durable(env={"TURNOUT_GPUS": "0,1"})
    client = instance.start()
    client.create_backend(
        "g",
        lambda request: os.environ["CUDA_VISIBLE_DEVICES"],
        config={"num_replicas": 2},
        replica_options={"num_gpus": 1},
    )
    before = {r.replica_id: (r.pid, r.gpus) for r in client.list_replicas("g")}
    assert sorted(gpus for _, gpus in before.values()) == ["0", "1"]
    instance.kill_controller()
    client = instance.start()
    assert {r.replica_id: (r.pid, r.gpus) for r in client.list_replicas("g")} == before
    # Both GPUs are still held: nothing is handed out twice.
    with pytest.raises(ValueError, match="free"):
        client.create_backend("h", lambda request: "h", replica_options={"num_gpus": 1})


def test_access_log_lines_and_rotation(make_durable: MakeDurable) -> None:
    instance = make_durable(env={"TURNOUT_LOG_MAX_BYTES": "2000", "TURNOUT_LOG_BACKUPS": "2"})
    client = instance.start()
    client.create_backend("a", lambda request: "a")
    client.create_endpoint("e", "a", route="/e", methods=["GET", "POST"])
    with requests.Session() as http:
        ids = [
            http.post(client.http_address + "/e", timeout=10).headers["X-Request-Id"]
            for _ in range(40)
        ]
    logs = instance.dir / "logs"
    access = logs / "proxy-access.log"
    wait_until(lambda: ids[-1] in access.read_text())
    line = next(line for line in access.read_text().splitlines() if ids[-1] in line)
    assert '"POST /e HTTP/1.1" 200' in line
    # Rotated by size, two backups kept.
    assert (logs / "proxy-access.log.1").exists() and (logs / "proxy-access.log.2").exists()
    assert not (logs / "proxy-access.log.3").exists()


def test_no_access_log(make_durable: MakeDurable) -> None:
    instance = make_durable("--no-access-log")
    client = instance.start()
    client.create_backend("a", lambda request: "a")
    client.create_endpoint("e", "a", route="/e")
    assert requests.get(client.http_address + "/e", timeout=10).text == "a"
    logs = instance.dir / "logs"
    assert (logs / "proxy.log").exists() and (logs / "controller.log").exists()
    assert not (logs / "proxy-access.log").exists()


def test_durable_needs_state_and_port_and_owns_its_state(durable: Durable) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "turnout.controller", "--durable", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    refused = run("--port", str(free_port()))
    assert refused.returncode == 2 and "--durable needs --state" in refused.stderr
    refused = run("--state", str(durable.state), "--port", "0")
    assert refused.returncode == 2 and "--durable needs a fixed --port" in refused.stderr
    durable.start()
    # A second controller on the same state would fight the first over its children.
    second = run("--state", str(durable.state), "--port", str(free_port()), "--http-port", "0")
    assert second.returncode == 1
    assert "in use by another controller" in second.stderr


def hello(request: object) -> str:
    return "hello"


def test_owned_instance_writes_no_access_log_by_default(
    client: turnout.Client, deploy: Deploy
) -> None:
    app = deploy(hello)
    assert requests.get(app.url, timeout=10).text == "hello"
    logs = Path(client.log_dir)
    assert (logs / "proxy.log").exists() and (logs / "controller.log").exists()
    assert not (logs / "proxy-access.log").exists()


def test_a_restarted_controller_keeps_an_apps_prefix_and_a_cors_policy(
    make_durable: MakeDurable,
) -> None:
    here = str(Path(__file__).resolve().parent)
    durable = make_durable(env={"PYTHONPATH": os.pathsep.join([here, *sys.path])})
    client = durable.start()
    client.create_backend("site", "web_apps:raw_wsgi")
    client.create_endpoint("site", "site", route="/site", cors={"allow_origins": ["*"]})
    [before] = client.list_replicas("site")
    durable.kill_controller()
    client = durable.start()
    [after] = client.list_replicas("site")
    assert (after.state, after.pid) == ("RUNNING", before.pid)
    # The routes the new controller publishes still make /site a prefix.
    client.update_endpoint("site", request_timeout=30)
    answer = requests.get(
        client.http_address + "/site/a", headers={"Origin": "https://x.example"}, timeout=10
    )
    assert answer.text == "/site|/a"
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
