"""The sender's own rules that need no replica: waiting for an endpoint to
appear, and the failures decided before any call is sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from sending_helpers import Replies

from turnout._sending import failures, sender
from turnout._sending.replica_link import ReplicaLink
from turnout._sending.sender import Sender
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import replica_pb2


def no_link(address: str) -> ReplicaLink:
    raise AssertionError("no replica is connected to in these tests")


def snapshot(version: int, *endpoints: pb.Endpoint) -> pb.RoutingSnapshot:
    return pb.RoutingSnapshot(
        version=version, endpoints=endpoints, backends=[pb.BackendTargets(tag="b")]
    )


def endpoint(name: str, weight: float = 1.0) -> pb.Endpoint:
    return pb.Endpoint(name=name, traffic=[pb.TrafficWeight(backend="b", weight=weight)])


Check = Callable[[Sender[replica_pb2.HandleResponse]], Awaitable[None]]


def run_with_sender(test: Check) -> None:
    async def main() -> None:
        await test(Sender(no_link, Replies()))

    asyncio.run(main())


def test_a_call_waits_for_its_endpoint_and_leaves_when_a_snapshot_has_it() -> None:
    async def test(it: Sender[replica_pb2.HandleResponse]) -> None:
        it.apply(snapshot(1))
        waiting = asyncio.create_task(it.route_named("later", 30.0, None))
        await asyncio.sleep(0)
        it.apply(snapshot(2, endpoint("other")))
        await asyncio.sleep(0)
        assert not waiting.done()
        it.apply(snapshot(3, endpoint("later")))
        route = await asyncio.wait_for(waiting, 10)
        assert route.name == "later"

    run_with_sender(test)


@pytest.mark.parametrize(
    ("wait", "timeout", "by_deadline"), [(0.05, None, False), (30, 0.05, True)]
)
def test_an_endpoint_that_does_not_appear_in_time_says_which_bound_ended_the_wait(
    wait: float, timeout: float | None, by_deadline: bool
) -> None:
    async def test(it: Sender[replica_pb2.HandleResponse]) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with pytest.raises(failures.EndpointMissing) as missing:
            await it.route_named("never", wait, deadline)
        assert missing.value.before_deadline is by_deadline

    run_with_sender(test)


def test_calls_waiting_for_endpoints_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sender, "MAX_AWAITING_CALLS", 2)

    async def test(it: Sender[replica_pb2.HandleResponse]) -> None:
        waiting = [asyncio.create_task(it.route_named("later", 30.0, None)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(failures.TooManyAwaiting):
            await it.route_named("later", 30.0, None)
        it.apply(snapshot(1, endpoint("later")))
        assert [r.name for r in await asyncio.gather(*waiting)] == ["later", "later"]

    run_with_sender(test)


def test_no_backend_and_no_replica_fail_before_sending_and_are_counted() -> None:
    async def test(it: Sender[replica_pb2.HandleResponse]) -> None:
        it.apply(snapshot(1, endpoint("dark", weight=0.0), endpoint("empty")))
        message = replica_pb2.HandleRequest(request_id="r")
        with pytest.raises(failures.NoBackend):
            await it.send(it.router.table.endpoint("dark"), message)  # type: ignore[arg-type]
        with pytest.raises(failures.NoReplica) as none:
            await it.send(it.router.table.endpoint("empty"), message)  # type: ignore[arg-type]
        assert none.value.tried is False
        counts = dict(it.stats.items())
        assert (counts["dark"].errors, counts["dark"].requests_by_backend) == (1, {})
        assert (counts["empty"].errors, counts["empty"].requests_by_backend) == (1, {"b": 1})

    run_with_sender(test)
