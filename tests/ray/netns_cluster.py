"""A real two-node Ray cluster on one machine, for the Ray launcher's tests.

Each "host" is a network namespace: the head at 10.200.0.1 and the worker at
10.200.0.2, each with a loopback of its own, so an address that works only on
one node fails from the other as it would between machines. The test process
itself is a third host on the same network: a bridge in the root namespace
(10.200.0.254) joins the two namespaces' veth pairs, as a switch joins
machines, so tests reach the nodes only by their advertised addresses.

The addresses are fixed, so two runs on one machine would clash: a run
holds an exclusive lock (``LOCK_PATH``) from before it builds the network
until it has removed it, and a second run waits for it. The namespaces and
links have fixed names too, so a run removes what a killed run left behind
(by those names only) before it builds its own.

Ray runs with token authentication (``RAY_AUTH_MODE=token``, the token in
``RAY_AUTH_TOKEN``) and without its dashboard. Everything started in a
namespace is stopped by pid (``ip netns pids``), never with ``ray stop``,
which would stop every Ray process of the machine.

This module is also the suite's pytest plugin (``-p netns_cluster`` in
pyproject: the ``ray`` marker, the ``ray_cluster`` and ``turnout_on_ray``
session fixtures), not a conftest.py: a second module named ``conftest`` on
sys.path would be the one replicas import when they unpickle e2e tests' code.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import turnout
from turnout._internal import controller_args, spawn
from turnout._internal.controller_args import ControllerArgs
from turnout._internal.rpc import TLSConfig

SUBNET_PREFIX = 24
HEAD_IP = "10.200.0.1"
WORKER_IP = "10.200.0.2"
# The test process's own address on the cluster network.
CLIENT_IP = "10.200.0.254"
GCS_PORT = 6379
# Each node's shared-memory object store (Ray's minimum is 75 MiB): replicas
# pass nothing through it but their readiness reports.
OBJECT_STORE_BYTES = 80 * 2**20
NODE_CPUS = 2
RAY_START_TIMEOUT_S = 120.0
STOP_GRACE_S = 5.0
DRIVER_TIMEOUT_S = 60.0
# One cluster at a time per machine (the addresses above are fixed); a second
# run waits this long for the first to finish before it gives up.
LOCK_PATH = Path("/run/turnout-ray-netns.lock")
LOCK_WAIT_S = 20 * 60.0
LOCK_POLL_S = 0.5
# Every namespace and link of the cluster is named from this prefix (links:
# at most 15 bytes), so set-up can find a killed run's leftovers by name.
NAME_PREFIX = "tnray"
# Set: the cluster's folder (Ray's and Turnout's logs) is kept after the session.
KEEP_DIR_ENV = "TURNOUT_TEST_KEEP_RAY_DIR"


# What only the worker node has, for placement tests: a custom Ray resource
# (room for 4 replicas asking 1 each) and a Ray label.
WORKER_RESOURCE = "worker_only"
WORKER_LABEL = ("role", "worker")
WORKER_EXTRAS = (
    f'--resources={{"{WORKER_RESOURCE}": 4}}',
    f"--labels={WORKER_LABEL[0]}={WORKER_LABEL[1]}",
)


def _run(argv: Sequence[str], timeout: float = 30.0) -> None:
    subprocess.run(list(argv), check=True, timeout=timeout, capture_output=True)


def _succeeds(argv: Sequence[str]) -> bool:
    return subprocess.run(list(argv), timeout=30, capture_output=True).returncode == 0


def _lock_machine() -> int:
    """An exclusive lock on ``LOCK_PATH`` (its open descriptor; closing it
    releases the lock, as the process's death does). Waits while another run
    holds it, at most ``LOCK_WAIT_S``."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + LOCK_WAIT_S
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeError(
                    f"another Ray test cluster held {LOCK_PATH} for {LOCK_WAIT_S:.0f} s"
                ) from None
            if not told:
                print(f"\nwaiting for another Ray test cluster ({LOCK_PATH}) to finish")
                told = True
            time.sleep(LOCK_POLL_S)


def ray_executable() -> str:
    """The ``ray`` command of this interpreter's environment."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else shutil.which("ray") or "ray"


@dataclass
class Node:
    namespace: str
    ip: str
    temp_dir: Path

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run on this node (inside its namespace)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def pids(self) -> list[int]:
        """Every process running on this node."""
        out = subprocess.run(
            ["ip", "netns", "pids", self.namespace], capture_output=True, text=True, timeout=10
        ).stdout
        return [int(p) for p in out.split()]

    def rss_bytes(self) -> int:
        """Resident memory of every process on this node, summed."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError, IndexError):
                pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
                total += pages * os.sysconf("SC_PAGE_SIZE")
        return total

    def stop_processes(self) -> None:
        """SIGTERM to every process on the node, SIGKILL to those left after
        ``STOP_GRACE_S``; returns once none is left (or after one more grace)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + STOP_GRACE_S
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not self.pids():
                return


@dataclass
class RayCluster:
    """Two namespaces, a bridge, and Ray on both; ``start`` builds, ``close`` removes."""

    tag: str = NAME_PREFIX
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tray")))
    head: Node = field(init=False)
    worker: Node = field(init=False)
    # What start() measured: seconds to a 2-node cluster, memory per node.
    start_s: float = 0.0
    memory: dict[str, int] = field(default_factory=dict)
    _links: list[str] = field(default_factory=list)
    _lock_fd: int | None = None

    def __post_init__(self) -> None:
        # Ray's socket paths live under the temp dir: keep it short (108 bytes).
        self.head = Node(f"{self.tag}h", HEAD_IP, self.root / "h")
        self.worker = Node(f"{self.tag}w", WORKER_IP, self.root / "w")

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{GCS_PORT}"

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    def env(self) -> dict[str, str]:
        """The environment of a Ray process (or driver) of this cluster."""
        env = dict(os.environ)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0")
        return env

    def _outer_links(self) -> list[str]:
        return [f"{self.tag}{side}o" for side in ("h", "w")]

    def _remove_leftovers(self) -> None:
        """Remove what a killed run left: processes in our namespaces (by
        pid), the namespaces, the bridge and veths, by our fixed names only.
        Called with the machine lock held, so no live run owns them."""
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
        ).stdout
        present = {line.split()[0] for line in listed.splitlines() if line.strip()}
        for node in (self.worker, self.head):
            if node.namespace in present:
                node.stop_processes()
                _run(["ip", "netns", "del", node.namespace])
        for link in (*self._outer_links(), self.bridge):
            if _succeeds(["ip", "link", "show", "dev", link]):
                _run(["ip", "link", "del", link])

    def _network(self) -> None:
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._links.append(self.bridge)
        _run(["ip", "addr", "add", f"{CLIENT_IP}/{SUBNET_PREFIX}", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for node, side in ((self.head, "h"), (self.worker, "w")):
            _run(["ip", "netns", "add", node.namespace])
            outer, inner = f"{self.tag}{side}o", f"{self.tag}{side}i"
            _run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
            self._links.append(outer)
            _run(["ip", "link", "set", inner, "netns", node.namespace])
            _run(["ip", "link", "set", outer, "master", self.bridge])
            _run(["ip", "link", "set", outer, "up"])
            ns = ["ip", "-n", node.namespace]
            _run([*ns, "addr", "add", f"{node.ip}/{SUBNET_PREFIX}", "dev", inner])
            _run([*ns, "link", "set", inner, "up"])
            _run([*ns, "link", "set", "lo", "up"])

    def _ray_start(self, node: Node, *flags: str) -> None:
        node.temp_dir.mkdir(parents=True, exist_ok=True)
        argv = node.exec_argv(
            [
                ray_executable(),
                "start",
                *flags,
                f"--node-ip-address={node.ip}",
                f"--num-cpus={NODE_CPUS}",
                f"--object-store-memory={OBJECT_STORE_BYTES}",
                f"--temp-dir={node.temp_dir}",
                "--disable-usage-stats",
            ]
        )
        done = subprocess.run(
            argv, env=self.env(), capture_output=True, text=True, timeout=RAY_START_TIMEOUT_S
        )
        if done.returncode != 0:
            raise RuntimeError(f"ray start on {node.ip} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> RayCluster:
        self._lock_fd = _lock_machine()
        began = time.monotonic()
        try:
            self._remove_leftovers()
            self._network()
            self._ray_start(self.head, "--head", f"--port={GCS_PORT}", "--include-dashboard=false")
            self._ray_start(self.worker, f"--address={self.address}", *WORKER_EXTRAS)
        except BaseException:
            self.close()
            raise
        self.start_s = time.monotonic() - began
        self.memory = {"head": self.head.rss_bytes(), "worker": self.worker.rss_bytes()}
        return self

    def rejoin_worker(self) -> None:
        """Start Ray on the worker again (after a test killed it) and wait
        until the cluster counts two live nodes."""
        self._ray_start(self.worker, f"--address={self.address}", *WORKER_EXTRAS)
        code = (
            f"import ray, time; ray.init(address='{self.address}', log_to_driver=False)\n"
            "for _ in range(240):\n"
            "    if sum(n['Alive'] for n in ray.nodes()) == 2: break\n"
            "    time.sleep(0.25)\n"
            "else: raise SystemExit('the worker did not rejoin')\n"
        )
        run_on(self, self.head, code)

    def close(self) -> None:
        """Stop every process of both nodes by pid, then remove what start() made."""
        for node in (self.worker, self.head):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                node.stop_processes()
        for link in self._links:
            with contextlib.suppress(subprocess.SubprocessError):
                _run(["ip", "link", "del", link])
        for node in (self.worker, self.head):
            with contextlib.suppress(subprocess.SubprocessError):
                _run(["ip", "netns", "del", node.namespace])
        if not os.environ.get(KEEP_DIR_ENV):
            shutil.rmtree(self.root, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def run_on(cluster: RayCluster, node: Node, code: str) -> str:
    """Run Python ``code`` on ``node`` (as a Ray driver may); its stdout."""
    env = cluster.env()
    done = subprocess.run(
        node.exec_argv([sys.executable, "-c", code]),
        env=env,
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/ray/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    cluster = RayCluster().start()
    print(
        f"\nray cluster up in {cluster.start_s:.1f} s; "
        f"head {cluster.memory['head'] / 2**20:.0f} MiB, "
        f"worker {cluster.memory['worker'] / 2**20:.0f} MiB"
    )
    try:
        yield cluster
    finally:
        cluster.close()


# Fixed ports are safe inside the head's namespace: nothing else listens there.
CONTROLLER_PORT = 50071
HTTP_PORT = 8000
CONTROLLER_READY_TIMEOUT_S = 90.0


@dataclass
class TurnoutOnRay:
    """A Turnout controller on the head node whose replicas are Ray actors;
    ``start`` starts it (again, on the same state: a restart), ``kill`` SIGKILLs it."""

    cluster: RayCluster
    instance_dir: Path
    process: subprocess.Popen[bytes] | None = None
    # Another instance on the same cluster needs ports of its own.
    controller_port: int = CONTROLLER_PORT
    http_port: int = HTTP_PORT
    ray_runtime_env: str | None = None
    ray_prefer_local_replicas: bool = False
    ray_proxy_location: str = controller_args.WITH_REPLICAS
    # TLS on every gRPC hop (mutual); None: plaintext with --insecure.
    tls: TLSConfig | None = None

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.controller_port}"

    @property
    def http_address(self) -> str:
        return f"http://{HEAD_IP}:{self.http_port}"

    def args(self, ready_fd: int) -> list[str]:
        options = ControllerArgs(
            host=HEAD_IP,
            port=self.controller_port,
            http_host=HEAD_IP,
            http_port=self.http_port,
            instance_dir=self.instance_dir,
            state=self.instance_dir / "state.db",
            ready_fd=ready_fd,
            durable=True,
            access_log=False,
            # The cluster network is the test's own: plaintext allowed.
            insecure=self.tls is None,
            tls=self.tls,
            allow_pickled_code=True,
            ray_address=self.cluster.address,
            ray_runtime_env=self.ray_runtime_env,
            ray_prefer_local_replicas=self.ray_prefer_local_replicas,
            ray_proxy_location=self.ray_proxy_location,
        )
        return self.cluster.head.exec_argv(controller_args.command(options))

    def start(self) -> turnout.Client:
        self.instance_dir.mkdir(parents=True, exist_ok=True)
        log = (self.instance_dir / "controller.out").open("ab")
        env = self.cluster.env()
        # Backends defined in these test modules unpickle by module name: the
        # replicas import them from here, as turnout.init's replicas would.
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
        with log:
            self.process, report = spawn.spawn(
                self.args,
                CONTROLLER_READY_TIMEOUT_S,
                "controller",
                env=env,
                stdout=log,
                stderr=log,
            )
        assert report.ok, report.message
        return self.client()

    def client(self) -> turnout.Client:
        token = (self.instance_dir / "token").read_text().strip()
        return turnout.Client(self.address, token=token, tls=self.tls)

    def kill(self) -> None:
        """SIGKILL the controller (what it started lives on: durable)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def shutdown(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.client().shutdown()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.kill()


@pytest.fixture(scope="session")
def turnout_on_ray(ray_cluster: RayCluster) -> Iterator[TurnoutOnRay]:
    """One instance on the cluster, shared by the tests that do not restart it."""
    instance = TurnoutOnRay(ray_cluster, ray_cluster.root / "turnout")
    instance.start()
    try:
        yield instance
    finally:
        instance.shutdown()


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def cluster_tls(folder: Path) -> TLSConfig:
    """A CA and one certificate it signs for both nodes' addresses (server
    and client at once, as an instance uses it on every hop)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr = folder / "node.pem", folder / "node.key", folder / "node.csr"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
             "-subj", "/CN=cluster-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    (folder / "node.ext").write_text(
        f"subjectAltName=IP:{HEAD_IP},IP:{WORKER_IP}\nbasicConstraints=CA:FALSE\n"
    )
    _openssl("req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=node")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", folder / "node.ext")  # fmt: skip
    key.chmod(0o600)
    return TLSConfig(cert=cert, key=key, ca=ca)
