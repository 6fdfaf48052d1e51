"""The `turnout` command line as an operator types it: real processes, real files.

Each test runs the CLI in a subprocess (``python -m turnout.cli``, the code the
``turnout`` console script runs) against instances started by the CLI itself,
on free ports and in a temporary data directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from conftest import processes_mentioning, wait_until

from turnout._internal import rpc
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc

# Backends the instances import by path, as an operator's project would hold them.
APP = """
def echo(request):
    word = request.args.get("word", "")
    print(f"printed {word}", flush=True)
    return word


class Greeter:
    def __init__(self, greeting="hello"):
        self.greeting = greeting

    def __call__(self, request):
        return f"{self.greeting}, {request.args.get('name', 'world')}"


class SlowStart(Greeter):
    # Loads for a while, as a model with big weights does.
    def __init__(self, seconds):
        import time

        time.sleep(seconds)
        super().__init__("slow")


def mounted(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [(environ["SCRIPT_NAME"] + "|" + environ["PATH_INFO"]).encode()]


class Wrapped:
    # A WSGI app whose signature does not say so: deploy files name its interface.
    def __call__(self, *args):
        return mounted(*args)


wrapped = Wrapped()
"""


def created(backend: str, replicas: int, output: str) -> bool:
    """Whether ``output`` has the line of a backend created and ready, with
    any progress ("0/2 running... ") between."""
    noun = "replica" if replicas == 1 else "replicas"
    progress = r"(\d+/\d+ running\.\.\. )*"
    line = rf"backend {backend}: creating \({replicas} {noun}\)\.\.\. {progress}ready"
    return re.search(line, output) is not None


BASE = """\
backends:
  greeter:
    import_path: cli_app:Greeter
    init_args: ["hi"]
    config: {num_replicas: 2}
  echo:
    import_path: cli_app:echo
endpoints:
  greet:
    route: /greet
    backend: greeter
    request_timeout: 5
  echo:
    route: /echo
    backend: echo
"""

ECHO_ONLY = """\
backends:
  echo: {import_path: cli_app:echo}
endpoints:
  echo: {route: /echo, backend: echo}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Home:
    """A user's environment: a project dir with cli_app.py, a data dir, ports."""

    project: Path
    data_dir: Path
    grpc_port: int
    http_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "XDG_DATA_HOME": str(self.data_dir.parent),
            "TURNOUT_ADDRESS": self.address,
            "PYTHONPATH": str(self.project),
        }

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "turnout.cli", *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.project,
            timeout=90,
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def write(self, name: str, text: str) -> str:
        (self.project / name).write_text(text)
        return name

    def ports(self) -> list[str]:
        return ["--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)]

    def start_detached(self) -> subprocess.CompletedProcess[str]:
        return self.run("start", "--detach", *self.ports())

    def processes(self) -> list[int]:
        # Controller, proxy and replicas all name a path in the instance dir.
        return processes_mentioning(str(self.data_dir))

    def clean_up(self) -> None:
        """Stop whatever the test left; kill what does not stop."""
        if self.processes():
            self.run("stop", check=False)
        for pid in self.processes():
            os.kill(pid, signal.SIGKILL)


def make_home(root: Path) -> Home:
    project = root / "project"
    project.mkdir(parents=True)
    (project / "cli_app.py").write_text(APP)
    return Home(project, root / "xdg" / "turnout", free_port(), free_port())


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    home = make_home(tmp_path)
    try:
        yield home
    finally:
        home.clean_up()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    """One detached instance with BASE deployed, shared by this module's tests."""
    home = make_home(tmp_path_factory.mktemp("running"))
    try:
        home.start_detached()
        home.run("deploy", home.write("base.yaml", BASE))
        yield home
        stopped = home.run("stop")
        assert "Stopped Turnout" in stopped.stdout
        assert home.processes() == []
    finally:
        home.clean_up()


def status_json(home: Home) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(home.run("status", "--json").stdout)
    return document


# ---- no instance, help ------------------------------------------------------------


def test_commands_without_an_instance_say_how_to_start_one(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    deploy_file = home.write("base.yaml", BASE)
    expected = f"turnout: no Turnout instance at {home.address}: start one with `turnout start`\n"
    for args in (["status"], ["stop"], ["logs", "echo"], ["deploy", deploy_file]):
        result = home.run(*args, check=False)
        assert (result.returncode, result.stderr, result.stdout) == (1, expected, ""), args
    # --address wins over $TURNOUT_ADDRESS; 127.0.0.1:50051 is the last resort.
    other = f"127.0.0.1:{free_port()}"
    result = home.run("status", "--address", other, check=False)
    assert result.stderr == expected.replace(home.address, other)


def test_help_and_version_through_the_console_script() -> None:
    script = Path(sys.executable).parent / "turnout"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == "turnout 0.1.0"
    top = subprocess.run([str(script), "--help"], capture_output=True, text=True).stdout
    for command in ("start", "stop", "status", "deploy", "logs", "TURNOUT_ADDRESS"):
        assert command in top
    deploy = subprocess.run([str(script), "deploy", "--help"], capture_output=True, text=True)
    assert "--prune" in deploy.stdout and "--dry-run" in deploy.stdout
    start = subprocess.run([str(script), "start", "--help"], capture_output=True, text=True)
    for flag in (
        "--detach",
        "--grpc-port",
        "--http-port",
        "--state",
        "--no-access-log",
        "--proxy-workers",
    ):
        assert flag in start.stdout


def test_start_refuses_fewer_than_one_proxy_worker(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    for value in ("0", "-1"):
        result = home.run("start", "--proxy-workers", value, *home.ports(), check=False)
        assert result.returncode == 2, value
        assert result.stdout == ""
        assert f"argument --proxy-workers: must be >= 1, got {value}" in result.stderr
    assert home.processes() == []
    assert not home.data_dir.exists()


def test_start_refuses_a_json_access_log_without_the_access_log(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    result = home.run(
        "start", "--no-access-log", "--access-log-format", "json", *home.ports(), check=False
    )
    assert result.returncode == 2
    assert "--access-log-format json needs the access log" in result.stderr
    assert home.processes() == []


# ---- the shared instance ------------------------------------------------------------


def test_detached_start_wrote_a_pid_file_and_refuses_a_second_start(running: Home) -> None:
    pid = int((running.data_dir / "turnout.pid").read_text())
    assert status_json(running)["instance"]["controller_pid"] == pid
    again = running.run("start", "--detach", "--grpc-port", str(free_port()), check=False)
    assert again.returncode == 1
    assert f"already running from {running.data_dir} (pid {pid})" in again.stderr
    elsewhere = running.run(
        "start", "--detach", "--instance-dir", str(running.project / "other"),
        "--grpc-port", str(running.grpc_port), check=False,
    )  # fmt: skip
    assert elsewhere.returncode == 1
    assert f"port {running.grpc_port} on 127.0.0.1 is already in use" in elsewhere.stderr


def test_status_shows_endpoints_backends_and_replicas(running: Home) -> None:
    table = running.run("status").stdout
    lines = [" ".join(line.split()) for line in table.splitlines()]
    assert "ENDPOINT ROUTE METHODS TRAFFIC SHADOWS TIMEOUT" in lines
    assert "greet /greet GET greeter 1 - 5s" in lines
    assert "echo /echo GET echo 1 - -" in lines
    assert "BACKEND WANTED RUNNING STARTING STOPPING FAILED CONFIG" in lines
    assert "greeter 2 2 0 0 0 defaults" in lines
    assert sum(line.startswith("greeter#") and " RUNNING " in line for line in lines) == 2

    document = status_json(running)
    assert document["endpoints"]["greet"] == {
        "route": "/greet",
        "methods": ["GET"],
        "traffic": {"greeter": 1.0},
        "shadows": {},
        "request_timeout": 5.0,
        "serves_app": False,
        "cors": None,
    }
    assert document["endpoints"]["echo"]["request_timeout"] is None
    assert document["backends"]["greeter"]["config"]["num_replicas"] == 2
    assert document["backends"]["greeter"]["replicas"]["RUNNING"] == 2
    replicas = [r for r in document["replicas"] if r["backend"] == "greeter"]
    assert [r["state"] for r in replicas] == ["RUNNING", "RUNNING"]
    assert all(r["pid"] > 0 and r["address"] for r in replicas)
    assert document["instance"]["http_address"] == running.http
    # Stable: the same instance prints the same JSON.
    again = running.run("status", "--json").stdout
    assert again == json.dumps(document, indent=2, sort_keys=True) + "\n"


def test_deploy_is_idempotent_updates_and_prunes(running: Home) -> None:
    canary = BASE + "  canary:\n    route: /canary\n    backend: v1\n"
    v1 = "  v1: {import_path: cli_app:Greeter, init_args: [v1]}\n"
    with_v1 = canary.replace("backends:\n", "backends:\n" + v1)
    first = running.run("deploy", running.write("v1.yaml", with_v1)).stdout
    assert created("v1", 1, first)
    assert "endpoint canary: creating... created" in first
    assert "backend greeter: unchanged" in first
    assert first.splitlines()[-1] == "Deployed: 2 created, 0 updated, 4 unchanged, 0 removed."
    assert requests.get(f"{running.http}/canary").text == "v1, world"

    again = running.run("deploy", "v1.yaml").stdout
    assert (
        again.splitlines()[-1] == "Nothing changed: 0 created, 0 updated, 6 unchanged, 0 removed."
    )
    assert "creating" not in again and "updating" not in again

    changed = with_v1.replace("init_args: [v1]", "init_args: [v2]").replace(
        "backend: v1", "backend: v1\n    methods: [GET, POST]"
    )
    updated = running.run("deploy", running.write("v2.yaml", changed)).stdout
    assert 'backend v1: updating (init_args: ["v1"] -> ["v2"])... updated' in updated
    assert "endpoint canary: updating (methods: GET -> GET,POST)... updated" in updated
    assert requests.post(f"{running.http}/canary", params={"name": "ops"}).text == "v2, ops"

    kept = running.run("deploy", "base.yaml").stdout
    assert "backend v1: kept (not in the file; --prune removes it)" in kept
    assert "endpoint canary: kept (not in the file; --prune removes it)" in kept
    assert requests.get(f"{running.http}/canary").status_code == 200

    dry = running.run("deploy", "base.yaml", "--prune", "--dry-run").stdout
    assert "endpoint canary: would be removed" in dry
    assert requests.get(f"{running.http}/canary").status_code == 200

    pruned = running.run("deploy", "base.yaml", "--prune").stdout
    assert "endpoint canary: removing... removed" in pruned
    assert "backend v1: removing... removed" in pruned
    assert pruned.splitlines()[-1] == "Deployed: 0 created, 0 updated, 4 unchanged, 2 removed."
    assert requests.get(f"{running.http}/canary").status_code == 404
    assert set(status_json(running)["backends"]) == {"greeter", "echo"}


def test_deploy_sets_changes_and_removes_an_endpoints_cors_policy(running: Home) -> None:
    endpoint = "  open:\n    route: /open\n    backend: greeter\n"
    cors = "    cors: {allow_origins: ['https://app.example'], max_age: 30}\n"
    first = running.run("deploy", running.write("cors.yaml", BASE + endpoint + cors)).stdout
    assert "endpoint open: creating... created" in first
    preflight = requests.options(
        f"{running.http}/open",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        timeout=30,
    )
    assert preflight.status_code == 204 and preflight.headers["Access-Control-Max-Age"] == "30"
    assert "endpoint open: unchanged" in running.run("deploy", "cors.yaml").stdout
    assert "CORS ORIGINS" in running.run("status").stdout
    removed = running.run("deploy", running.write("plain.yaml", BASE + endpoint)).stdout
    assert "endpoint open: updating (cors: " in removed and "-> null)... updated" in removed
    answer = requests.get(f"{running.http}/open", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in answer.headers
    running.run("deploy", "base.yaml", "--prune")


def test_deploy_serves_a_web_app_whose_interface_the_file_names(running: Home) -> None:
    site = "  site:\n    import_path: cli_app:wrapped\n    interface: wsgi\n"
    endpoint = "  site:\n    route: /site\n    backend: site\n"
    text = BASE.replace("backends:\n", "backends:\n" + site) + endpoint
    assert created("site", 1, running.run("deploy", running.write("site.yaml", text)).stdout)
    assert requests.get(f"{running.http}/site/a/b", timeout=30).text == "/site|/a/b"
    assert "backend site: unchanged" in running.run("deploy", "site.yaml").stdout
    assert "site /site/* GET" in " ".join(running.run("status").stdout.split())
    running.run("deploy", "base.yaml", "--prune")


def test_deploy_shows_replicas_coming_up(running: Home) -> None:
    slow = "backends:\n  slow:\n    import_path: cli_app:SlowStart\n    init_args: [2.5]\n"
    slow += "    config: {num_replicas: 2}\n"
    output = running.run("deploy", running.write("slow.yaml", slow)).stdout
    assert created("slow", 2, output)
    # The constructors take 2.5 s: the line said how far the start was meanwhile.
    assert "0/2 running... " in output
    pruned = running.run("deploy", "base.yaml", "--prune").stdout
    assert "backend slow: removing... removed" in pruned


def test_a_bad_deploy_file_changes_nothing(running: Home) -> None:
    before = status_json(running)
    bad = BASE.replace("num_replicas: 2", "num_replicas: 0").replace("route: /echo", "route: echo")
    result = running.run("deploy", running.write("bad.yaml", bad), check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "turnout: bad.yaml: nothing was changed:",
        "  backends.greeter.config.num_replicas: num_replicas must be >= 1, got 0",
        "  endpoints.echo.route: route 'echo' must start with '/'",
    ]
    ghost = running.write("ghost.json", json.dumps({"endpoints": {"e": {"backend": "ghost"}}}))
    result = running.run("deploy", ghost, check=False)
    assert result.returncode == 2
    assert "endpoints.e.traffic.ghost: no backend of that name" in result.stderr
    after = status_json(running)
    assert (after["endpoints"], after["backends"]) == (before["endpoints"], before["backends"])


def _read_until(process: subprocess.Popen[str], text: str, timeout: float = 30.0) -> str:
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout.fileno(), selectors.EVENT_READ)
        while text not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not printed; got {seen!r}"
            if selector.select(remaining):
                chunk = os.read(process.stdout.fileno(), 65536).decode()
                assert chunk, f"exited before printing {text!r}; got {seen!r}"
                seen += chunk
    return seen


def test_logs_show_what_a_handler_printed(running: Home) -> None:
    assert requests.get(f"{running.http}/echo", params={"word": "marker-one"}).text == "marker-one"
    # What a handler prints goes to the replica's rotated log, as a log line.
    printed = "INFO print.stdout: printed marker-one"
    wait_until(lambda: printed in running.run("logs", "echo").stdout)
    tail = running.run("logs", "echo", "-n", "1").stdout.splitlines()
    assert any(line.startswith("echo#1 | ") and line.endswith(printed) for line in tail)
    assert "GET /echo?word=marker-one" in running.run("logs", "access").stdout

    follow = running.argv("logs", "echo", "--follow", "-n", "1")
    with subprocess.Popen(
        follow, stdout=subprocess.PIPE, text=True, env=running.env, cwd=running.project
    ) as process:
        try:
            # The tail first; no line written after it is lost.
            _read_until(process, "printed marker-one\n")
            requests.get(f"{running.http}/echo", params={"word": "marker-two"})
            seen = _read_until(process, "print.stdout: printed marker-two\n")
            assert "marker-one" not in seen  # printed once, by the tail
            process.send_signal(signal.SIGINT)
            assert process.wait(10) == 0
        finally:
            process.kill()

    # One replica by its id: read through the controller (GetReplicaLog), as
    # the replicas on a Ray cluster's other nodes are.
    by_id = running.run("logs", "echo#1", "-n", "3").stdout.splitlines()
    assert 0 < len(by_id) <= 3 and all(line.startswith("echo#1 | ") for line in by_id)
    assert any(line.endswith("printed marker-two") for line in by_id)

    unknown = running.run("logs", "nope", check=False)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith(
        "turnout: no backend or running replica named 'nope' (backends: echo, greeter"
    )


# ---- instances of their own ---------------------------------------------------------


@contextlib.contextmanager
def foreground(home: Home) -> Iterator[subprocess.Popen[str]]:
    """``turnout start`` in the foreground, as typed in a terminal; killed on the way out."""
    with subprocess.Popen(
        home.argv("start", *home.ports()),
        stdout=subprocess.PIPE,
        text=True,
        env=home.env,
        cwd=home.project,
    ) as process:
        try:
            yield process
        finally:
            process.kill()


def test_foreground_start_runs_until_turnout_stop(home: Home) -> None:
    with foreground(home) as process:
        printed = _read_until(process, "Press Ctrl-C to stop.")
        assert f"gRPC:  {home.address}" in printed
        assert f"state: {home.data_dir / 'state.db'}" in printed
        # The same file as JSON.
        as_json = json.dumps(yaml.safe_load(ECHO_ONLY))
        deployed = home.run("deploy", home.write("echo.json", as_json)).stdout
        assert created("echo", 1, deployed)
        assert requests.get(f"{home.http}/echo", params={"word": "fg"}).text == "fg"
        assert (home.data_dir / "turnout.pid").exists()
        assert len(home.processes()) == 3  # controller, proxy, one replica

        stopped = home.run("stop")
        assert stopped.stdout.startswith(f"Stopped Turnout at {home.address}")
        assert process.wait(30) == 0
    assert not (home.data_dir / "turnout.pid").exists()
    assert home.processes() == []


def test_foreground_start_stops_everything_on_sigterm(home: Home) -> None:
    with foreground(home) as process:
        _read_until(process, "Press Ctrl-C to stop.")
        assert requests.get(f"{home.http}/-/healthz").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert home.processes() == []
    assert home.run("status", check=False).returncode == 1


def test_a_killed_controller_is_restarted_and_adopts_what_kept_serving(home: Home) -> None:
    home.start_detached()
    home.run("deploy", home.write("echo.yaml", ECHO_ONLY))
    replica_pids = {r["pid"] for r in status_json(home)["replicas"]}
    controller = int((home.data_dir / "turnout.pid").read_text())
    os.kill(controller, signal.SIGKILL)
    wait_until(lambda: home.run("status", check=False).returncode == 1)
    # The proxy and replicas serve on without it.
    assert requests.get(f"{home.http}/echo", params={"word": "still"}).text == "still"

    restarted = home.start_detached()  # the stale pid file does not stop it
    assert "Turnout is running" in restarted.stdout
    after = status_json(home)
    assert after["instance"]["controller_pid"] != controller
    assert {r["pid"] for r in after["replicas"]} == replica_pids
    assert requests.get(f"{home.http}/echo", params={"word": "again"}).text == "again"
    home.run("stop")
    assert home.processes() == []


def test_start_after_a_crash_with_clients_connected_is_not_refused(home: Home) -> None:
    """The killed controller's end of each open connection closes first and
    lingers (TIME_WAIT) on the gRPC port: that is no listener, so a restart,
    as systemd's Restart=on-failure makes at once, must not trip on it."""
    home.start_detached()
    controller = int((home.data_dir / "turnout.pid").read_text())
    token = (home.data_dir / "token").read_text()
    with rpc.channel(home.address, rpc.Security(token=token)) as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        assert stub.GetInstance(pb.GetInstanceRequest(), timeout=10).controller_pid == controller
        os.kill(controller, signal.SIGKILL)
        wait_until(lambda: home.run("status", check=False).returncode == 1)

        restarted = home.start_detached()
        assert "Turnout is running" in restarted.stdout
        reply = stub.GetInstance(pb.GetInstanceRequest(), timeout=10, wait_for_ready=True)
        assert reply.controller_pid not in (0, controller)
    home.run("stop")
    assert home.processes() == []


def test_start_refuses_a_port_something_listens_on(home: Home) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", home.grpc_port))
        taken.listen()
        refused = home.run("start", "--detach", *home.ports(), check=False)
    assert refused.returncode == 1
    assert f"port {home.grpc_port} on 127.0.0.1 is already in use" in refused.stderr
    assert home.processes() == []
