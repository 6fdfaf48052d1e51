"""The replica runtime under load and change: batching, backpressure, concurrency,
reconfiguration, zero-downtime updates, deadlines, health, placement.

Timing-sensitive behaviour is checked by ordering and counting (files that a
handler waits for, batch sizes it saw), never by measuring durations.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Deploy, wait_until

import turnout
from turnout.client import Client
from turnout.instance import LocalInstance


def wait_for(path: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


# ---- batching ----------------------------------------------------------------


class Batched:
    @turnout.accept_batch
    def __call__(self, requests: list[Any]) -> list[dict[str, Any]]:
        return [
            {
                "size": turnout.context.batch_size,
                "web": turnout.context.web,
                "item": r.get_json(silent=True),
            }
            for r in requests
        ]

    @turnout.accept_batch
    def tag(self, requests: list[Any]) -> list[str]:
        return [f"tag:{len(requests)}:{r.data}" for r in requests]

    @turnout.accept_batch
    def short(self, requests: list[Any]) -> list[int]:
        return [1] if len(requests) > 1 else [0]

    @turnout.accept_batch
    def boom(self, requests: list[Any]) -> list[int]:
        raise ArithmeticError("batch failed")


def test_batches_fill_up_to_max_batch_size(client: turnout.Client, deploy: Deploy) -> None:
    app = deploy(Batched, config={"max_batch_size": 4, "batch_wait_timeout": 2})
    handle = client.get_handle(app.backend)
    # Four calls at once fill a batch, which then runs without waiting out the timeout.
    results = [f.result(timeout=30) for f in [handle.remote(i) for i in range(4)]]
    assert [r["size"] for r in results] == [4, 4, 4, 4]
    assert [r["item"] for r in results] == [0, 1, 2, 3]
    assert not any(r["web"] for r in results)
    # Eight calls: never more than four to a batch.
    results = [f.result(timeout=30) for f in [handle.remote(i) for i in range(8)]]
    assert max(r["size"] for r in results) == 4
    assert sorted(r["item"] for r in results) == list(range(8))
    # Over HTTP, the handler knows it (a lone request runs once the wait is over).
    assert requests.get(app.url, json=5).json() == {"size": 1, "web": True, "item": 5}


def test_methods_are_never_mixed_in_a_batch(client: turnout.Client, deploy: Deploy) -> None:
    app = deploy(Batched, config={"max_batch_size": 8, "batch_wait_timeout": 0.2})
    handle = client.get_handle(app.backend)
    tagger = handle.options(method_name="tag")
    futures = [(tagger if i % 2 else handle).remote(i) for i in range(8)]
    results = [f.result(timeout=30) for f in futures]
    tagged = [r for r in results if isinstance(r, str)]
    plain = [r for r in results if isinstance(r, dict)]
    assert len(tagged) == 4 and len(plain) == 4
    # Each method's batch held only its own four calls.
    assert all(int(t.split(":")[1]) <= 4 for t in tagged)
    assert all(p["size"] <= 4 for p in plain)


def test_bad_batches_fail_every_request_of_that_batch_only(
    client: turnout.Client, deploy: Deploy
) -> None:
    app = deploy(Batched, config={"max_batch_size": 4, "batch_wait_timeout": 2})
    handle = client.get_handle(app.backend)
    short = handle.options(method_name="short")
    futures = [short.remote(i) for i in range(4)]
    for future in futures:
        with pytest.raises(turnout.BackendError, match="returned 1 results"):
            future.result(timeout=30)
    boom = [handle.options(method_name="boom").remote(i) for i in range(2)]
    for future in boom:
        with pytest.raises(turnout.BackendError) as info:
            future.result(timeout=30)
        assert info.value.remote_type == "ArithmeticError"
    # Other batches are unaffected.
    assert [f.result(timeout=30)["size"] for f in [handle.remote(i) for i in range(4)]] == [4] * 4


def plain(request: Any) -> str:
    return "plain"


def test_batch_size_without_the_decorator_is_refused(
    client: turnout.Client, deploy: Deploy
) -> None:
    with pytest.raises(turnout.InvalidArgumentError, match="accept_batch"):
        client.create_backend("unbatched", plain, config={"max_batch_size": 4})
    app = deploy(plain)
    with pytest.raises(turnout.InvalidArgumentError, match="accept_batch"):
        client.update_backend_config(app.backend, {"max_batch_size": 4})
    assert client.get_backend_config(app.backend).max_batch_size == 1


@pytest.mark.parametrize(
    "options",
    [
        {"resources": {"accelerator_x": 1}},
        {"node_selector": {"zone": "a"}},
        {"runtime_env": {"pip": ["six"]}},
        {"max_replicas_per_node": 1, "num_cpus": 0},
    ],
)
def test_ray_placement_options_are_refused_on_one_machine(
    client: turnout.Client, unique: Any, options: dict[str, Any]
) -> None:
    name = unique("placed")
    with pytest.raises(turnout.InvalidArgumentError, match="need a Ray instance"):
        client.create_backend(name, plain, config={"num_replicas": 2}, replica_options=options)
    assert name not in client.list_backends()


def test_max_replicas_per_node_up_to_num_replicas_is_harmless_on_one_machine(
    client: turnout.Client, unique: Any
) -> None:
    name = unique("one-node")
    options = {"max_replicas_per_node": 1, "num_cpus": 0}
    client.create_backend(name, plain, replica_options=options)
    try:
        # Scaling past it would need a second node.
        with pytest.raises(turnout.InvalidArgumentError, match="max_replicas_per_node"):
            client.update_backend_config(name, {"num_replicas": 2})
        assert len(client.list_replicas(name)) == 1
    finally:
        client.delete_backend(name)


# ---- backpressure and concurrency ------------------------------------------------


class Gate:
    """Each request marks that it started, then waits for ``release`` (a file)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, request: Any) -> str:
        Path(self.folder, f"started-{request.args.get('n', 'x')}").touch()
        wait_for(os.path.join(self.folder, "release"))
        return "done"


def test_full_replicas_queue_then_refuse_with_retry_after(
    client: turnout.Client, deploy: Deploy, tmp_path: Path
) -> None:
    app = deploy(
        Gate,
        str(tmp_path),
        config={"max_concurrent_queries": 1, "max_queued_requests": 2, "queue_timeout": 60},
    )

    def get(n: int) -> requests.Response:
        return requests.get(app.url, params={"n": n}, timeout=60)

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(get, 0)
        wait_until((tmp_path / "started-0").exists)
        queued = [pool.submit(get, n) for n in (1, 2)]
        # Both wait in the proxy: the replica holds one request at a time.
        wait_until(lambda: _queued(client, app.backend) == 2)
        refused = get(3)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"] == "Overloaded"
        assert requests.get(client.http_address + "/-/healthz").status_code == 200
        assert not (tmp_path / "started-1").exists()
        (tmp_path / "release").touch()
        assert [f.result().status_code for f in [first, *queued]] == [200, 200, 200]


def _queued(client: turnout.Client, backend: str) -> int:
    metrics = requests.get(client.http_address + "/-/metrics").text
    for line in metrics.splitlines():
        if line.startswith(f'turnout_queued_requests{{backend="{backend}"}}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def test_ten_times_overload_answers_every_request(
    client: turnout.Client, deploy: Deploy, tmp_path: Path
) -> None:
    app = deploy(
        Gate,
        str(tmp_path),
        config={"max_concurrent_queries": 2, "max_queued_requests": 3, "queue_timeout": 60},
    )
    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(requests.get, app.url, timeout=60) for _ in range(50)]
        wait_until(lambda: sum(f.done() for f in futures) >= 45)
        (tmp_path / "release").touch()
        statuses = Counter(f.result().status_code for f in futures)
    assert sum(statuses.values()) == 50
    assert statuses[200] == 5 and statuses[503] == 45


def test_handles_are_refused_with_an_overload_error(
    client: turnout.Client, deploy: Deploy, tmp_path: Path
) -> None:
    app = deploy(
        Gate,
        str(tmp_path),
        config={"max_concurrent_queries": 1, "max_queued_requests": 1, "queue_timeout": 60},
    )
    handle = client.get_handle(app.backend)
    held = handle.remote(n=0)
    wait_until((tmp_path / "started-0").exists)
    queued = handle.remote(n=1)
    with pytest.raises(turnout.OverloadedError):
        handle.remote(n=2).result(timeout=30)
    (tmp_path / "release").touch()
    assert held.result(timeout=30) == queued.result(timeout=30) == "done"


class Meeting:
    """Counts how many calls are inside at once; each waits until ``size`` are
    there (or a while), so the count reaches the replica's limit and no more."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.inside = 0
        self.most = 0
        self.lock = threading.Condition()

    def __call__(self, request: Any) -> int:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            self.lock.notify_all()
            self.lock.wait_for(lambda: self.inside >= self.size, timeout=5)
            self.inside -= 1
            return self.most


class AsyncMeeting:
    def __init__(self, size: int) -> None:
        self.size = size
        self.inside = 0
        self.most = 0

    async def __call__(self, request: Any) -> int:
        self.inside += 1
        self.most = max(self.most, self.inside)
        for _ in range(500):
            if self.inside >= self.size:
                break
            await asyncio.sleep(0.01)
        self.inside -= 1
        return self.most


@pytest.mark.parametrize("kind", [Meeting, AsyncMeeting])
def test_concurrency_reaches_max_concurrent_queries_and_no_more(
    client: turnout.Client, deploy: Deploy, kind: type
) -> None:
    app = deploy(kind, 3, config={"max_concurrent_queries": 3})
    handle = client.get_handle(app.backend)
    results = [f.result(timeout=60) for f in [handle.remote() for _ in range(9)]]
    assert max(results) == 3


# ---- reconfiguration ----------------------------------------------------------


class Threshold:
    def __init__(self) -> None:
        self.threshold = -1

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.threshold = config["threshold"]

    def __call__(self, request: Any) -> dict[str, int]:
        return {"threshold": self.threshold, "pid": os.getpid()}


def test_user_config_reconfigures_live_replicas(client: turnout.Client, deploy: Deploy) -> None:
    app = deploy(Threshold, config={"num_replicas": 2, "user_config": {"threshold": 1}})
    before = {r.pid for r in client.list_replicas(app.backend)}
    handle = client.get_handle(app.backend)
    assert {handle.remote().result(timeout=30)["threshold"] for _ in range(10)} == {1}
    client.update_backend_config(app.backend, {"user_config": {"threshold": 7}})
    answers = [handle.remote().result(timeout=30) for _ in range(20)]
    assert {a["threshold"] for a in answers} == {7}
    assert (
        {a["pid"] for a in answers} == before == {r.pid for r in client.list_replicas(app.backend)}
    )
    assert client.get_backend_config(app.backend).user_config == {"threshold": 7}


def test_user_config_needs_a_reconfigure_method(client: turnout.Client, deploy: Deploy) -> None:
    with pytest.raises(turnout.InvalidArgumentError, match="reconfigure"):
        client.create_backend("no-reconfigure", plain, config={"user_config": {"a": 1}})
    app = deploy(Gate, "/tmp")
    with pytest.raises(turnout.InvalidArgumentError, match="reconfigure"):
        client.update_backend_config(app.backend, {"user_config": {"a": 1}})


# ---- zero-downtime changes ---------------------------------------------------------


class V1:
    def __call__(self, request: Any) -> str:
        return "v1"


class V2:
    def __call__(self, request: Any) -> str:
        return "v2"


def test_scaling_and_code_rollout_lose_no_request(client: turnout.Client, deploy: Deploy) -> None:
    app = deploy(V1, config={"num_replicas": 3, "graceful_shutdown_timeout": 10})
    failures: list[str] = []
    answers: Counter[str] = Counter()
    stop = threading.Event()

    def stream() -> None:
        with requests.Session() as http:
            while not stop.is_set():
                reply = http.get(app.url)
                if reply.status_code == 200:
                    answers[reply.text] += 1
                else:
                    failures.append(f"{reply.status_code}: {reply.text}")

    workers = [threading.Thread(target=stream) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        old_pids = {r.pid for r in client.list_replicas(app.backend)}
        client.update_backend_config(app.backend, {"num_replicas": 1})
        client.update_backend_config(app.backend, {"num_replicas": 3})
        client.update_backend(app.backend, V2)
        served_before_end = answers["v2"]
        wait_until(lambda: answers["v2"] > served_before_end + 20)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == []
    assert answers["v1"] > 0
    replicas = client.list_replicas(app.backend)
    assert len(replicas) == 3 and not {r.pid for r in replicas} & old_pids
    assert requests.get(app.url).text == "v2"


class BrokenV3:
    def __init__(self) -> None:
        raise RuntimeError("v3 cannot load its weights")


def test_a_rollout_that_cannot_start_changes_nothing(
    client: turnout.Client, deploy: Deploy
) -> None:
    app = deploy(V1, config={"num_replicas": 2})
    pids = {r.pid for r in client.list_replicas(app.backend)}
    with pytest.raises(turnout.InvalidArgumentError, match="cannot load its weights"):
        client.update_backend(app.backend, BrokenV3)
    assert {r.pid for r in client.list_replicas(app.backend)} == pids
    assert requests.get(app.url).text == "v1"


# ---- deadlines, retries ------------------------------------------------------------


class Slow:
    """Sleeps; writes ``cancelled`` into its folder if its call is cancelled."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    async def __call__(self, request: Any) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            Path(self.folder, f"cancelled-{request.args.get('n', 'x')}").touch()
            raise
        return "slept"


def test_deadlines_answer_504_and_cancel_the_work(
    client: turnout.Client, deploy: Deploy, tmp_path: Path
) -> None:
    app = deploy(Slow, str(tmp_path))
    reply = requests.get(app.url, params={"n": 1}, headers={"X-Serve-Timeout-Ms": "300"})
    assert reply.status_code == 504
    assert reply.json()["error"] == "GatewayTimeout"
    wait_until((tmp_path / "cancelled-1").exists, timeout=10)

    bad = requests.get(app.url, headers={"X-Serve-Timeout-Ms": "soon"})
    assert bad.status_code == 400 and bad.json()["error"] == "BadRequest"

    handle = client.get_handle(app.backend).options(timeout=0.3)
    with pytest.raises(turnout.DeadlineExceededError):
        handle.remote(n=2).result(timeout=30)
    wait_until((tmp_path / "cancelled-2").exists, timeout=10)


def test_endpoint_timeout(client: turnout.Client, unique: Any, tmp_path: Path) -> None:
    name = unique("slow-endpoint")
    client.create_backend(name, Slow, str(tmp_path))
    client.create_endpoint(name, name, route=f"/{name}", request_timeout=0.3)
    assert client.list_endpoints()[name]["route"] == f"/{name}"
    reply = requests.get(f"{client.http_address}/{name}", params={"n": 3})
    assert reply.status_code == 504
    wait_until((tmp_path / "cancelled-3").exists, timeout=10)


def pid(request: Any) -> int:
    return os.getpid()


def crash(request: Any) -> None:
    os._exit(1)


def test_a_request_is_retried_when_its_replica_is_gone(
    client: turnout.Client, deploy: Deploy
) -> None:
    app = deploy(pid, config={"num_replicas": 2})
    victim, survivor = (r.pid for r in client.list_replicas(app.backend))
    os.kill(client.controller_pid, signal.SIGSTOP)
    try:
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{victim}").exists() or _zombie(victim))
        # The proxy still lists the dead replica; requests that pick it cannot
        # connect, so they go to the other one instead of failing.
        answers = {requests.get(app.url).json() for _ in range(20)}
        assert answers == {survivor}
    finally:
        os.kill(client.controller_pid, signal.SIGCONT)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_replica_dying_mid_request_is_a_502(client: turnout.Client, deploy: Deploy) -> None:
    app = deploy(crash)
    reply = requests.get(app.url)
    assert reply.status_code == 502
    assert reply.json()["error"] == "ReplicaFailed"


# ---- health ----------------------------------------------------------------


class Fragile:
    """Unhealthy while the file ``sick`` exists; cannot start while ``broken`` does."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        if os.path.exists(os.path.join(folder, "broken")):
            raise RuntimeError("weights are corrupt")

    def check_health(self) -> None:
        if os.path.exists(os.path.join(self.folder, "sick")):
            raise RuntimeError("feeling sick")

    def __call__(self, request: Any) -> int:
        return os.getpid()


def test_failing_check_health_replaces_the_replica(
    client: turnout.Client, deploy: Deploy, tmp_path: Path
) -> None:
    app = deploy(
        Fragile,
        str(tmp_path),
        config={"health_check_period": 0.2, "health_check_failure_threshold": 2},
    )
    (old,) = (r.pid for r in client.list_replicas(app.backend))
    (tmp_path / "sick").touch()
    wait_until(lambda: all(r.pid != old for r in client.list_replicas(app.backend)))
    (tmp_path / "sick").unlink()
    wait_until(lambda: _running_pid(client, app.backend) not in (0, old))
    assert requests.get(app.url).json() == _running_pid(client, app.backend)


def _running_pid(client: turnout.Client, backend: str) -> int:
    running = [r.pid for r in client.list_replicas(backend) if r.state == "RUNNING"]
    return running[0] if running else 0


def test_a_constructor_that_raises_on_restart_is_reported_and_retried(
    client: turnout.Client, deploy: Deploy, tmp_path: Path
) -> None:
    app = deploy(Fragile, str(tmp_path))
    (old,) = (r.pid for r in client.list_replicas(app.backend))
    (tmp_path / "broken").touch()
    os.kill(old, signal.SIGKILL)

    def reported() -> bool:
        (replica,) = client.list_replicas(app.backend)
        return replica.state == "FAILED" and "weights are corrupt" in replica.error

    wait_until(reported)
    assert requests.get(client.http_address + "/-/healthz").status_code == 200
    (tmp_path / "broken").unlink()
    wait_until(lambda: _running_pid(client, app.backend) not in (0, old), timeout=60)


# ---- placement ----------------------------------------------------------------


def placement(request: Any) -> dict[str, Any]:
    return {
        "cpus": sorted(os.sched_getaffinity(0)),
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "model": os.environ.get("MODEL_NAME"),
    }


def test_env_and_cpu_pinning(client: turnout.Client, unique: Any) -> None:
    name = unique("placed")
    client.create_backend(
        name, placement, replica_options={"num_cpus": 1, "env": {"MODEL_NAME": "tiny"}}
    )
    client.create_endpoint(name, name)
    seen = client.get_handle(name).remote().result(timeout=30)
    (replica,) = client.list_replicas(name)
    assert seen["model"] == "tiny"
    assert len(seen["cpus"]) == 1 and tuple(seen["cpus"]) == replica.cpus


def test_gpus_are_assigned_and_never_oversubscribed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A second instance that believes it has two GPUs: the allocation is real,
    # only the discovery is told what to see.
    monkeypatch.setenv("TURNOUT_GPUS", "0,1")
    instance = LocalInstance.start("127.0.0.1", 0)
    gpu_client = Client(instance.address, _instance=instance)
    try:
        gpu_client.create_backend("whole", placement, replica_options={"num_gpus": 1})
        gpu_client.create_backend(
            "halves", placement, config={"num_replicas": 2}, replica_options={"num_gpus": 0.5}
        )
        gpu_client.create_backend("cpu-only", placement)
        for name in ("whole", "halves", "cpu-only"):
            gpu_client.create_endpoint(name, name)
        gpus = {
            name: {
                gpu_client.get_handle(name).remote().result(timeout=30)["gpus"] for _ in range(6)
            }
            for name in ("whole", "halves", "cpu-only")
        }
        assert len(gpus["whole"]) == 1 and len(gpus["halves"]) == 1
        assert gpus["whole"] | gpus["halves"] == {"0", "1"}
        assert gpus["cpu-only"] == {""}
        with pytest.raises(turnout.InvalidArgumentError, match="GPU"):
            gpu_client.create_backend("greedy", placement, replica_options={"num_gpus": 1})
        assert "greedy" not in gpu_client.list_backends()
        assert all(r.backend != "greedy" for r in gpu_client.list_replicas())
    finally:
        gpu_client.shutdown()


def test_gpus_that_do_not_exist_are_refused(client: turnout.Client) -> None:
    with pytest.raises(turnout.InvalidArgumentError, match="GPU"):
        client.create_backend("needs-8-gpus", placement, replica_options={"num_gpus": 8})
    assert "needs-8-gpus" not in client.list_backends()


def grpc_experiments(request: Any) -> str:
    return os.environ.get("GRPC_EXPERIMENTS", "<unset>")


def test_children_use_grpcs_older_io_engine_unless_the_environment_says_otherwise(
    client: turnout.Client, unique: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("grpc-env")
    client.create_backend(name, grpc_experiments)
    client.create_endpoint(name, name)
    default = client.get_handle(name).remote().result(timeout=30)
    assert default == "-event_engine_client,-event_engine_listener"

    monkeypatch.setenv("GRPC_EXPERIMENTS", "-event_engine_client")
    instance = LocalInstance.start("127.0.0.1", 0)
    own = Client(instance.address, _instance=instance)
    try:
        own.create_backend("grpc-env", grpc_experiments)
        own.create_endpoint("grpc-env", "grpc-env")
        assert own.get_handle("grpc-env").remote().result(timeout=30) == "-event_engine_client"
    finally:
        own.shutdown()
