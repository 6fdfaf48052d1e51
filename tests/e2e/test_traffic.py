"""Traffic control over HTTP: weighted splits, shadows, session affinity, rollout."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from conftest import Deploy, wait_until

import turnout


def wait_for(path: str) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


class Version:
    """Answers with its version name and pid. With ``?started=A&release=B`` it
    creates A, then waits for B: the test controls when it finishes."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, request: Any) -> dict[str, Any]:
        if "started" in request.args:
            Path(request.args["started"]).touch()
            wait_for(request.args["release"])
        return {"version": self.name, "pid": os.getpid()}


def get_many(url: str, count: int, concurrency: int = 32, **kwargs: Any) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        limit = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession() as session:

            async def one() -> dict[str, Any]:
                async with limit, session.get(url, **kwargs) as reply:
                    assert reply.status == 200, await reply.text()
                    body: dict[str, Any] = await reply.json()
                    return body

            return await asyncio.gather(*(one() for _ in range(count)))

    return asyncio.run(run())


@pytest.fixture
def two_versions(client: turnout.Client, deploy: Deploy) -> tuple[str, str, str]:
    """An endpoint on v1 and a second backend v2; returns (endpoint, v1, v2)."""
    app = deploy(Version, "v1")
    v2 = app.backend + "-v2"
    client.create_backend(v2, Version, "v2")
    return app.backend, app.backend, v2


def test_weighted_split_is_statistically_right(
    client: turnout.Client, two_versions: tuple[str, str, str]
) -> None:
    endpoint, v1, v2 = two_versions
    client.set_traffic(endpoint, {v1: 0.2, v2: 0.8})
    assert client.list_endpoints()[endpoint]["traffic"] == {v1: 0.2, v2: 0.8}
    # 3,000 requests: a share off by 0.03 is 4 standard deviations of a fair
    # split's (sqrt(0.2 * 0.8 / 3000) = 0.0073), so a correct router fails
    # this about once in 30,000 runs and one that ignores the weights always.
    total = 3_000
    answers = get_many(f"{client.http_address}/{endpoint}", total)
    counts = Counter(a["version"] for a in answers)
    assert abs(counts["v1"] / total - 0.2) < 0.03
    assert abs(counts["v2"] / total - 0.8) < 0.03

    def reported() -> bool:
        stats = client.endpoint_stats().get(endpoint, {})
        return sum(stats.get("requests", {}).values()) >= total  # type: ignore[no-any-return]

    wait_until(reported, timeout=10)
    requests_by_backend = client.endpoint_stats()[endpoint]["requests"]
    assert requests_by_backend[v1] == counts["v1"]
    assert requests_by_backend[v2] == counts["v2"]


def test_bad_traffic_is_refused_and_changes_nothing(
    client: turnout.Client, two_versions: tuple[str, str, str]
) -> None:
    endpoint, v1, v2 = two_versions
    before = client.list_endpoints()[endpoint]
    bad: list[tuple[Any, dict[str, float], type[Exception]]] = [
        ("no-such-endpoint", {v1: 1.0}, turnout.NotFoundError),
        (endpoint, {"no-such-backend": 1.0}, turnout.NotFoundError),
        (endpoint, {v1: 0.5, v2: 0.6}, turnout.InvalidArgumentError),
        (endpoint, {v1: -0.5, v2: 1.5}, turnout.InvalidArgumentError),
        (endpoint, {v1: float("nan")}, turnout.InvalidArgumentError),
        (endpoint, {v1: float("inf")}, turnout.InvalidArgumentError),
    ]
    for name, weights, error in bad:
        with pytest.raises(error):
            client.set_traffic(name, weights)
        assert client.list_endpoints()[endpoint] == before
    with pytest.raises(TypeError):
        client.set_traffic(endpoint, [(v1, 1.0)])  # type: ignore[arg-type]


def test_weight_zero_leaves_the_split_so_the_backend_can_be_deleted(
    client: turnout.Client, two_versions: tuple[str, str, str]
) -> None:
    # The last step of a rollout as users write it: {old: 0, new: 1}, then delete old.
    # (Ray 0.8 kept the zero weight and refused the delete; docs/ray-compatibility.md.)
    endpoint, v1, v2 = two_versions
    client.set_traffic(endpoint, {v1: 0.0, v2: 1.0})
    assert client.list_endpoints()[endpoint]["traffic"] == {v2: 1.0}
    client.delete_backend(v1)
    assert v1 not in client.list_backends()
    assert requests.get(f"{client.http_address}/{endpoint}").json()["version"] == "v2"
    with pytest.raises(turnout.NotFoundError):
        client.set_traffic(endpoint, {v1: 0.0, v2: 1.0})  # an unknown name is still refused


def test_new_split_applies_without_dropping_requests_in_flight(
    client: turnout.Client, two_versions: tuple[str, str, str], tmp_path: Path
) -> None:
    endpoint, v1, v2 = two_versions
    url = f"{client.http_address}/{endpoint}"
    pids = {r.pid for r in client.list_replicas()}
    started, release = tmp_path / "started", tmp_path / "release"
    slow: list[requests.Response] = []
    params = {"started": str(started), "release": str(release)}
    worker = threading.Thread(target=lambda: slow.append(requests.get(url, params=params)))
    worker.start()
    wait_until(started.exists, timeout=10, interval=0.01)
    # v1 is working on a request while the split changes under it.
    client.set_traffic(endpoint, {v2: 1.0})
    release.touch()
    worker.join()
    assert slow[0].status_code == 200 and slow[0].json()["version"] == "v1"
    assert {a["version"] for a in get_many(url, 50)} == {"v2"}
    # Nothing restarted to apply it.
    assert pids <= {r.pid for r in client.list_replicas()}


class Power:
    """``{"y": x ** exponent}``; with a ``release`` path it first waits for it."""

    def __init__(self, exponent: int, release: str = "") -> None:
        self.exponent = exponent
        self.release = release

    def __call__(self, request: Any) -> dict[str, int]:
        if self.release:
            wait_for(self.release)
        return {"y": int(request.args["x"]) ** self.exponent}


def explode(request: Any) -> None:
    raise RuntimeError("candidate is broken")


def test_stat_has_ray_serve_08s_shape_and_names(
    client: turnout.Client, deploy: Deploy, unique: Any
) -> None:
    app = deploy(Power, 2)
    endpoint = app.backend
    shadow = unique("cube")
    client.create_backend(shadow, Power, 3)
    client.shadow_traffic(endpoint, shadow, 1.0)
    # Listed from the start, with zeros: reading them never raises KeyError.
    zero = {"sent": 0, "matched": 0, "differed": 0, "failed": 0}
    nothing_recent = {
        "requests": 0,
        "errors": 0,
        **dict.fromkeys(("p50", "p95", "p99", "handler_p50", "handler_p95", "handler_p99")),
    }
    assert client.endpoint_stats()[endpoint] == {
        "requests": {endpoint: 0},
        "errors": 0,
        "shadows": {shadow: zero},
        "recent": {"window_s": 60.0, **nothing_recent, "backends": {endpoint: nothing_recent}},
    }

    def value(name: str, label: str, of: str) -> int:
        [count] = [
            entry["value"]
            for entry in client.stat()
            if entry["info"] == {"name": name, "type": "MetricType.COUNTER", label: of}
        ]
        return count  # type: ignore[no-any-return]

    assert value("backend_request_counter", "backend", shadow) == 0
    assert value("backend_error_counter", "backend", endpoint) == 0
    for x in range(5):
        assert requests.get(app.url, params={"x": x}).json() == {"y": x * x}
    # int("two") raises in the handler: a 500, counted as an error.
    assert requests.get(app.url, params={"x": "two"}).status_code == 500

    # As Ray Serve's own shadow test reads it.
    def requests_to(backend: str) -> int:
        return sum(
            entry["value"]
            for entry in client.stat()
            if entry["info"]["name"] == "backend_request_counter"
            and entry["info"]["backend"] == backend
        )

    wait_until(lambda: requests_to(shadow) == 6 and requests_to(endpoint) == 6, timeout=30)
    assert value("num_router_requests", "endpoint", endpoint) == 6
    assert value("num_error_endpoint_requests", "endpoint", endpoint) == 1
    assert value("backend_error_counter", "backend", endpoint) == 1
    # The shadow answered int("two") too (an error), but only primaries count here.
    assert value("backend_error_counter", "backend", shadow) == 0
    assert all(set(entry) == {"info", "value"} for entry in client.stat())
    stats = client.endpoint_stats()[endpoint]
    assert (stats["requests"], stats["errors"]) == ({endpoint: 6}, 1)


def test_shadows_never_reach_or_hold_the_client_and_are_compared(
    client: turnout.Client, deploy: Deploy, tmp_path: Path
) -> None:
    app = deploy(Power, 2)
    endpoint = app.backend
    same, sleepy, cube, broken = (f"{endpoint}-{n}" for n in ("same", "sleepy", "cube", "broken"))
    release = tmp_path / "release"
    client.create_backend(same, Power, 2)
    client.create_backend(sleepy, Power, 2, str(release))
    client.create_backend(cube, Power, 3)
    client.create_backend(broken, explode)
    for backend in (sleepy, cube, broken):
        client.shadow_traffic(endpoint, backend, 1.0)
    client.shadow_traffic(endpoint, same, 0.5)
    shadows = {sleepy: 1.0, cube: 1.0, broken: 1.0, same: 0.5}
    assert client.list_endpoints()[endpoint]["shadows"] == shadows

    # The primary answers while the sleepy shadow still holds its copy: the
    # proxy does not wait for shadows, and their answers never reach the client.
    first = requests.get(app.url, params={"x": 3}, timeout=10)
    assert first.status_code == 200 and first.json() == {"y": 9}
    release.touch()
    for x in range(2, 101):
        reply = requests.get(app.url, params={"x": x})
        assert reply.status_code == 200 and reply.json() == {"y": x * x}

    def compared() -> bool:
        counts = client.endpoint_stats().get(endpoint, {}).get("shadows", {})
        return (
            all(
                b in counts and counts[b]["matched"] + counts[b]["differed"] == counts[b]["sent"]
                for b in shadows
            )
            and counts[sleepy]["sent"] == 100
        )

    wait_until(compared, timeout=30)
    counts = client.endpoint_stats()[endpoint]["shadows"]
    assert counts[sleepy] == {"sent": 100, "matched": 100, "differed": 0, "failed": 0}
    # x = 0 or 1 would cube to the same; x runs from 2, so every cube differs.
    assert counts[cube] == {"sent": 100, "matched": 0, "differed": 100, "failed": 0}
    assert counts[broken] == {"sent": 100, "matched": 0, "differed": 100, "failed": 0}
    assert counts[same]["matched"] == counts[same]["sent"]
    assert 25 <= counts[same]["sent"] <= 75
    metrics = requests.get(client.http_address + "/-/metrics").text
    line = (
        f'turnout_shadow_comparisons_total{{backend="{broken}",endpoint="{endpoint}",'
        'result="differed"} 100.0'
    )
    assert line in metrics

    client.shadow_traffic(endpoint, broken, 0)
    assert broken not in client.list_endpoints()[endpoint]["shadows"]
    with pytest.raises(turnout.InvalidArgumentError):
        client.shadow_traffic(endpoint, same, 1.5)
    with pytest.raises(turnout.NotFoundError):
        client.shadow_traffic(endpoint, "no-such-backend", 0.5)
    with pytest.raises(turnout.InUseError):
        client.delete_backend(sleepy)


def test_shard_key_pins_backend_and_replica_and_scaling_moves_few_keys(
    client: turnout.Client, two_versions: tuple[str, str, str]
) -> None:
    endpoint, v1, v2 = two_versions
    url = f"{client.http_address}/{endpoint}"
    client.update_backend_config(v1, {"num_replicas": 3})
    client.update_backend_config(v2, {"num_replicas": 3})
    client.set_traffic(endpoint, {v1: 0.5, v2: 0.5})
    keys = [f"user-{i}" for i in range(60)]

    def placement() -> dict[str, tuple[str, int]]:
        seen: dict[str, tuple[str, int]] = {}
        with requests.Session() as http:
            for key in keys:
                answers = {
                    (a["version"], a["pid"])
                    for a in (
                        http.get(url, headers={"X-Serve-Shard-Key": key}).json() for _ in range(3)
                    )
                }
                assert len(answers) == 1, f"key {key} moved between calls: {answers}"
                seen[key] = answers.pop()
        return seen

    before = placement()
    assert {version for version, _ in before.values()} == {"v1", "v2"}
    assert len({pid for _, pid in before.values()}) == 6
    assert placement() == before

    # A fourth replica of v1 takes some of v1's keys; no other key moves.
    old_pids = {r.pid for r in client.list_replicas(v1)}
    client.update_backend_config(v1, {"num_replicas": 4})
    after = placement()
    moved = {key for key in keys if after[key] != before[key]}
    assert moved, "the new replica got no key"
    assert all(before[k][0] == "v1" and after[k][1] not in old_pids for k in moved)
    assert len(moved) < len([k for k in keys if before[k][0] == "v1"])


def test_rollout_with_zero_failed_requests(client: turnout.Client, deploy: Deploy) -> None:
    app = deploy(Version, "v1", config={"num_replicas": 2})
    endpoint, v1, v2 = app.backend, app.backend, app.backend + "-v2"
    failures: list[str] = []
    versions: Counter[str] = Counter()
    stop = threading.Event()

    def steady_stream() -> None:
        with requests.Session() as http:
            while not stop.is_set():
                reply = http.get(app.url)
                if reply.status_code == 200:
                    versions[reply.json()["version"]] += 1
                else:
                    failures.append(f"{reply.status_code} {reply.text}")

    stream = threading.Thread(target=steady_stream)
    stream.start()
    try:
        client.create_backend(v2, Version, "v2", config={"num_replicas": 2})
        for share in (0.1, 0.5, 1.0):
            client.set_traffic(endpoint, {v1: round(1 - share, 6), v2: share})
            time.sleep(0.5)
        client.set_traffic(endpoint, {v2: 1.0})
        client.delete_backend(v1)
        time.sleep(0.5)
        served_after_delete = versions["v2"]
        time.sleep(0.5)
    finally:
        stop.set()
        stream.join()
    assert failures == []
    assert versions["v1"] > 0 and versions["v2"] > served_after_delete
    assert v1 not in client.list_backends()


# ---- changing an endpoint in place ------------------------------------------


def test_update_endpoint_changes_methods_without_a_gap(
    client: turnout.Client, deploy: Deploy, unique: Any
) -> None:
    app = deploy(Version, "a")
    other = unique("b")
    client.create_backend(other, Version, "b")
    client.set_traffic(app.backend, {app.backend: 0.5, other: 0.5})
    failures: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                status = session.get(app.url).status_code
                if status != 200:
                    failures.append(status)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        time.sleep(0.3)
        client.update_endpoint(app.backend, methods=["GET", "POST"])
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert failures == []  # delete + create would have answered 404 in between
    assert requests.post(app.url).status_code == 200
    described = client.list_endpoints()[app.backend]
    assert described["methods"] == ["GET", "POST"]
    assert described["traffic"] == {app.backend: 0.5, other: 0.5}


def test_update_endpoint_moves_the_route_and_sets_the_timeout(
    client: turnout.Client, deploy: Deploy, unique: Any, tmp_path: Path
) -> None:
    app = deploy(Version, "a")
    new_route = f"/{unique('moved')}"
    client.update_endpoint(app.backend, route=new_route)
    assert requests.get(app.url).status_code == 404
    moved = client.http_address + new_route
    assert requests.get(moved).json()["version"] == "a"
    assert client.list_endpoints()[app.backend]["methods"] == ["GET"]  # kept
    assert client.list_endpoints()[app.backend]["request_timeout"] is None

    client.update_endpoint(app.backend, request_timeout=0.2)
    assert client.list_endpoints()[app.backend]["request_timeout"] == 0.2
    started, release = tmp_path / "started", tmp_path / "release"
    reply = requests.get(moved, params={"started": str(started), "release": str(release)})
    release.touch()
    assert reply.status_code == 504

    client.update_endpoint(app.backend, route="")
    assert requests.get(moved).status_code == 404
    assert client.list_endpoints()[app.backend]["route"] is None


def test_update_endpoint_refuses_bad_changes(
    client: turnout.Client, deploy: Deploy, unique: Any
) -> None:
    first, second = deploy(Version, "a"), deploy(Version, "b")
    with pytest.raises(turnout.NotFoundError):
        client.update_endpoint(unique("missing"), methods=["POST"])
    with pytest.raises(turnout.AlreadyExistsError, match="already taken"):
        client.update_endpoint(first.backend, route=second.route)
    with pytest.raises(turnout.InvalidArgumentError, match="must start with '/'"):
        client.update_endpoint(first.backend, route="nope")
    with pytest.raises(turnout.InvalidArgumentError, match="unknown HTTP method"):
        client.update_endpoint(first.backend, methods=["FETCH"])
    with pytest.raises(turnout.InvalidArgumentError, match="at least one"):
        client.update_endpoint(first.backend, methods=[])
    # Nothing changed on the way.
    assert client.list_endpoints()[first.backend]["route"] == first.route
    assert requests.get(first.url).json()["version"] == "a"
