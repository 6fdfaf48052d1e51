"""Rollouts the controller runs, on real processes under bounded HTTP load: a
healthy backend is rolled out to the end; one that fails 20 % of requests, or
is 5x slower, is rolled back at its first step with the numbers that
breached; a controller SIGKILL mid-rollout resumes it; pause, resume, abort;
one per endpoint; bad input; grpcurl."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Deploy, wait_until
from test_grpcurl import run_grpcurl
from test_recovery import Durable

import turnout

# Requests a load thread sends at most, and for how long: every loop is bounded.
MAX_REQUESTS = 20_000
MAX_LOAD_S = 120.0


class Version:
    """Answers its name after ``delay`` seconds; every ``fail_every``-th call fails."""

    def __init__(self, name: str, delay: float = 0.0, fail_every: int = 0) -> None:
        self.name, self.delay, self.fail_every = name, delay, fail_every
        self.calls = 0

    def __call__(self, request: Any) -> str:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError(f"{self.name} failed call {self.calls}")
        return self.name


class Load:
    """GETs one URL from a thread, about ``rate`` a second, until stopped
    (or MAX_REQUESTS, MAX_LOAD_S); counts the answers by body, 500s apart."""

    def __init__(self, url: str, rate: float = 100.0) -> None:
        self.url, self.pause = url, 1.0 / rate
        self.answers: dict[str, int] = {}
        self.failed = 0
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        until = time.monotonic() + MAX_LOAD_S
        with requests.Session() as session:
            while not self._stop.is_set() and self.sent < MAX_REQUESTS:
                if time.monotonic() > until:
                    return
                self.sent += 1
                try:
                    reply = session.get(self.url, timeout=10)
                except requests.RequestException:
                    self.failed += 1
                    continue
                if reply.status_code == 200:
                    self.answers[reply.text] = self.answers.get(reply.text, 0) + 1
                else:
                    self.failed += 1
                time.sleep(self.pause)


def traffic(client: turnout.Client, endpoint: str) -> dict[str, float]:
    found: dict[str, float] = client.list_endpoints()[endpoint]["traffic"]
    return found


@pytest.fixture
def pair(
    client: turnout.Client, deploy: Deploy, unique: Callable[[str], str]
) -> Callable[..., tuple[str, str, str, str]]:
    """An endpoint on an old backend and a new one beside it:
    (endpoint, old, new, url)."""

    def make(old: Version, new: Version) -> tuple[str, str, str, str]:
        app = deploy(Version, old.name, old.delay, old.fail_every)
        to = unique("new")
        client.create_backend(to, Version, new.name, new.delay, new.fail_every)
        return app.backend, app.backend, to, app.url

    return make


def test_a_rollout_to_a_healthy_backend_completes(
    client: turnout.Client, pair: Callable[..., tuple[str, str, str, str]]
) -> None:
    endpoint, old, new, url = pair(Version("old"), Version("new"))
    with Load(url) as load:
        rollout = client.rollout(
            endpoint,
            new,
            steps=[0.25, 1.0],
            step_s=2,
            slo={"max_error_rate": 0.05, "min_requests": 10},
        )
        assert rollout.wait(timeout=60) == "succeeded", rollout.info()
    info = rollout.info()
    assert info["step"] == 2 and info["evidence"] == []
    assert info["verdict"] == f"all traffic on {new!r}"
    assert traffic(client, endpoint) == {new: 1.0}
    assert load.failed == 0 and load.answers.get("new", 0) > 0
    assert requests.get(url, timeout=10).text == "new"
    assert client.list_rollouts()[endpoint]["state"] == "succeeded"


@pytest.mark.parametrize(
    ("new", "slo", "bound"),
    [
        (Version("new", fail_every=5), {"max_error_rate": 0.05}, "max_error_rate"),
        (Version("new", delay=0.1), {"max_latency_ratio": 2.0}, "max_latency_ratio"),
    ],
    ids=["fails-20-percent", "5x-slower"],
)
def test_a_bad_backend_is_rolled_back_at_its_first_step_with_the_breach(
    client: turnout.Client,
    pair: Callable[..., tuple[str, str, str, str]],
    new: Version,
    slo: dict[str, float],
    bound: str,
) -> None:
    endpoint, old, to, url = pair(Version("old", delay=0.02), new)
    started = time.monotonic()
    with Load(url, rate=200) as load:
        rollout = client.rollout(
            endpoint, to, steps=[0.1, 0.5, 1.0], step_s=60, slo={**slo, "min_requests": 10}
        )
        assert rollout.wait(timeout=60) == "rolled_back", rollout.info()
    info = rollout.info()
    assert info["step"] == 1
    assert [b["bound"] for b in info["evidence"]] == [bound]
    (breach,) = info["evidence"]
    assert breach["value"] > breach["limit"] == slo[bound]
    assert bound in info["verdict"] and info["new"]["requests"] >= 10
    assert traffic(client, endpoint) == {old: 1.0}
    # Rolled back long before the step's 60 s; what reached the new backend
    # (its answers and its failures) is about the first step's 10 %.
    assert time.monotonic() - started < 50
    reached = load.answers.get("new", 0) + load.failed
    total = reached + load.answers.get("old", 0)
    assert reached <= 0.2 * total + 10, (reached, total)
    assert requests.get(url, timeout=10).text == "old"


def test_pause_resume_and_abort(
    client: turnout.Client, pair: Callable[..., tuple[str, str, str, str]]
) -> None:
    endpoint, old, new, _ = pair(Version("old"), Version("new"))
    rollout = client.rollout(endpoint, new, steps=[0.5, 1.0], step_s=30)
    wait_until(lambda: rollout.state == "stepping")
    assert traffic(client, endpoint) == {old: 0.5, new: 0.5}
    rollout.pause()
    assert rollout.state == "paused"
    with pytest.raises(turnout.InUseError):
        rollout.pause()
    assert traffic(client, endpoint) == {old: 0.5, new: 0.5}
    rollout.resume()
    assert rollout.state == "stepping" and rollout.info()["step"] == 1
    with pytest.raises(turnout.InUseError, match="already has a rollout"):
        client.rollout(endpoint, new)
    rollout.abort()
    assert rollout.state == "aborted"
    assert traffic(client, endpoint) == {old: 1.0}
    with pytest.raises(turnout.DeadlineExceededError):
        client.rollout(endpoint, new, steps=[1.0], step_s=30).wait(timeout=0.5)
    client.get_rollout(endpoint).abort()


def test_bad_input_is_refused_with_invalid_argument(
    client: turnout.Client, pair: Callable[..., tuple[str, str, str, str]]
) -> None:
    endpoint, old, new, _ = pair(Version("old"), Version("new"))
    with pytest.raises(turnout.InvalidArgumentError, match="increasing"):
        client.rollout(endpoint, new, steps=[0.5, 0.25, 1.0])
    with pytest.raises(turnout.InvalidArgumentError, match="does not exist"):
        client.rollout(endpoint, "no-such-backend")
    with pytest.raises(turnout.InvalidArgumentError, match="unknown slo key"):
        client.rollout(endpoint, new, slo={"max_errors": 1})
    with pytest.raises(turnout.NotFoundError):
        client.rollout("no-such-endpoint", new)
    with pytest.raises(turnout.NotFoundError):
        client.get_rollout(endpoint)
    with pytest.raises(TypeError):
        client.rollout(endpoint, new, steps="0.5")  # type: ignore[arg-type]
    assert traffic(client, endpoint) == {old: 1.0}


def test_grpcurl_starts_and_reads_a_rollout(
    client: turnout.Client, pair: Callable[..., tuple[str, str, str, str]]
) -> None:
    endpoint, old, new, _ = pair(Version("old"), Version("new"))
    service = "turnout.v1.ControllerService"

    def call(method: str, data: dict[str, Any]) -> Any:
        result = run_grpcurl(
            client.controller_address, f"{service}/{method}", token=client.token, data=data
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    bad = run_grpcurl(
        client.controller_address,
        f"{service}/StartRollout",
        token=client.token,
        data={"rollout": {"endpoint": endpoint, "toBackend": new, "steps": [0.5, 0.1]}},
    )
    assert "InvalidArgument" in bad.stderr and "increasing" in bad.stderr
    started = call(
        "StartRollout",
        {"rollout": {"endpoint": endpoint, "toBackend": new, "steps": [0.5, 1], "stepSeconds": 30}},
    )
    assert started["rollout"]["from_backend"] == old, started
    got = call("GetRollout", {"endpoint": endpoint})["rollout"]
    assert got["state"] in ("ROLLOUT_STATE_PENDING", "ROLLOUT_STATE_STEPPING")
    assert got["slo"] == {"max_error_rate": 0.01, "min_requests": 20}
    listed = call("ListRollouts", {})["rollouts"]
    assert endpoint in [r["endpoint"] for r in listed]
    aborted = call("AbortRollout", {"endpoint": endpoint})["rollout"]
    assert aborted["state"] == "ROLLOUT_STATE_ABORTED"
    assert traffic(client, endpoint) == {old: 1.0}


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[Durable]:
    instance = Durable(tmp_path)
    try:
        yield instance
    finally:
        instance.cleanup()


def test_a_controller_sigkill_mid_rollout_resumes_it(durable: Durable) -> None:
    client = durable.start()
    client.create_backend("old", lambda request: "old")
    client.create_backend("new", lambda request: "new")
    client.create_endpoint("app", "old", route="/app")
    url = f"{client.http_address}/app"
    with Load(url) as load:
        rollout = client.rollout(
            "app", "new", steps=[0.2, 0.5, 1.0], step_s=3, slo={"min_requests": 5}
        )
        wait_until(lambda: rollout.info()["step"] == 2, timeout=60)
        durable.kill_controller()
        client = durable.start()
        resumed = client.get_rollout("app")
        assert resumed.info()["step"] >= 2
        assert resumed.wait(timeout=60) == "succeeded", resumed.info()
    assert "resuming the rollout of 'app' at step 2" in durable.log()
    assert traffic(client, "app") == {"new": 1.0}
    assert load.failed == 0


def test_the_cli_starts_shows_pauses_and_aborts_and_status_shows_it(
    client: turnout.Client,
    pair: Callable[..., tuple[str, str, str, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from turnout.cli import main

    endpoint, old, new, _ = pair(Version("old"), Version("new"))
    monkeypatch.setenv("TURNOUT_TOKEN", client.token or "")
    at = ["--address", client.controller_address]
    assert main(["rollout", "start", endpoint, new, "--steps", "0.5,0.1", *at]) == 1
    assert "increasing" in capsys.readouterr().err
    assert main(["rollout", "start", endpoint, new, "--steps", "0.5,1", "--step-s", "30",
                 "--slo", "max_p99_s=0.5", *at]) == 0  # fmt: skip
    assert f"{endpoint}  {old}" in capsys.readouterr().out
    wait_until(lambda: client.get_rollout(endpoint).state == "stepping")
    assert main(["rollout", "pause", endpoint, *at]) == 0
    assert "paused" in capsys.readouterr().out
    assert main(["rollout", "status", "--json", *at]) == 0
    shown = json.loads(capsys.readouterr().out)[endpoint]
    assert (shown["state"], shown["step"], shown["slo"]) == (
        "paused",
        1,
        {"max_p99_s": 0.5, "min_requests": 20},
    )
    assert main(["status", *at]) == 0
    text = capsys.readouterr().out
    assert "ROLLOUT" in text and "1/2 (0.5)" in text and "paused at step 1" in text
    assert main(["rollout", "abort", endpoint, *at]) == 0
    assert "aborted" in capsys.readouterr().out
    assert main(["rollout", "resume", endpoint, *at]) == 1
    assert "no paused rollout" in capsys.readouterr().err
    assert traffic(client, endpoint) == {old: 1.0}


def test_a_deploy_file_with_a_rollout_block_moves_the_endpoint_by_a_rollout(
    client: turnout.Client, unique: Callable[[str], str]
) -> None:
    import io

    from turnout._deploy_apply import Instance, apply
    from turnout.deploy import Plan, parse, plan

    a, b, endpoint = unique("hi"), unique("hey"), unique("greet")
    backends = {
        a: {"import_path": "importable_backends:Greeter", "init_args": ["hi"]},
        b: {"import_path": "importable_backends:Greeter", "init_args": ["hey"]},
    }
    first = {"backends": backends, "endpoints": {endpoint: {"route": f"/{endpoint}", "backend": a}}}
    block = {"steps": [0.5, 1], "step_s": 1, "slo": {"max_error_rate": 0.05, "min_requests": 5}}
    second = {
        "backends": backends,
        "endpoints": {endpoint: {"route": f"/{endpoint}", "backend": b, "rollout": block}},
    }
    instance = Instance(client)

    def action(steps: Plan) -> str:
        (change,) = [c for c in steps.endpoints if c.name == endpoint]
        return change.action

    try:
        apply(plan(parse(first), instance.state()), instance, io.StringIO())
        out = io.StringIO()
        with Load(f"{client.http_address}/{endpoint}"):
            apply(plan(parse(second), instance.state()), instance, out)
            assert "rollout started" in out.getvalue()
            # Deployed again while it runs: nothing to change.
            again = plan(parse(second), instance.state())
            info = client.get_rollout(endpoint).info()
            if info["state"] != "succeeded":
                assert action(again) == "unchanged", (again, info)
            assert client.get_rollout(endpoint).wait(timeout=60) == "succeeded"
        assert traffic(client, endpoint) == {b: 1.0}
        assert action(plan(parse(second), instance.state())) == "unchanged"
    finally:
        instance.close()


def test_a_shadow_phase_gates_on_the_match_rate(
    client: turnout.Client, pair: Callable[..., tuple[str, str, str, str]]
) -> None:
    # "other" answers differently from "old": its copies differ, so it never
    # gets real traffic; "same" answers the same and goes on to the steps.
    endpoint, old, other, url = pair(Version("old"), Version("other"))
    same = f"{other}-same"
    client.create_backend(same, Version, "old")
    slo = {"min_requests": 10}
    with Load(url) as load:
        differs = client.rollout(
            endpoint, other, steps=[1.0], step_s=1, slo=slo, shadow_s=1, min_match_rate=0.9
        )
        assert differs.wait(timeout=60) == "rolled_back", differs.info()
        info = differs.info()
        assert info["step"] == 0 and [b["bound"] for b in info["evidence"]] == ["min_match_rate"]
        assert info["evidence"][0]["value"] == 0.0
        assert client.list_endpoints()[endpoint]["shadows"] == {}
        assert load.answers.get("other", 0) == 0  # its answers never reached a client
        matches = client.rollout(endpoint, same, steps=[1.0], step_s=1, slo=slo, shadow_s=1)
        assert matches.wait(timeout=60) == "succeeded", matches.info()
    assert traffic(client, endpoint) == {same: 1.0}


def test_the_read_role_reads_rollouts_and_only_admin_changes_them(
    client: turnout.Client, pair: Callable[..., tuple[str, str, str, str]]
) -> None:
    from test_auth import handle_token

    endpoint, old, new, _ = pair(Version("old"), Version("new"))
    client.rollout(endpoint, new, steps=[0.5, 1.0], step_s=30)
    read = handle_token(client)  # what user code holds: read, router, data
    service = "turnout.v1.ControllerService"

    def code(method: str, data: dict[str, Any]) -> str:
        result = run_grpcurl(
            client.controller_address,
            f"{service}/{method}",
            token=read,
            reflect_token=client.token,
            data=data,
        )
        return "OK" if result.returncode == 0 else result.stderr

    assert code("GetRollout", {"endpoint": endpoint}) == "OK"
    assert code("ListRollouts", {}) == "OK"
    for method in ("PauseRollout", "AbortRollout", "StartRollout"):
        data = {"rollout": {"endpoint": endpoint}} if method == "StartRollout" else {}
        assert "PermissionDenied" in code(method, data or {"endpoint": endpoint}), method
    assert client.get_rollout(endpoint).state in ("pending", "stepping")
    client.get_rollout(endpoint).abort()
    assert traffic(client, endpoint) == {old: 1.0}
