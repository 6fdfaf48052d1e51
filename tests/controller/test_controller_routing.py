"""RoutePublisher: versions, coalescing watchers, acknowledgements."""

from __future__ import annotations

import asyncio

from turnout.controller.routing import RoutePublisher
from turnout.v1 import controller_pb2 as pb


def endpoint(name: str) -> pb.Endpoint:
    return pb.Endpoint(name=name, route=f"/{name}", methods=["GET"])


def test_watcher_gets_current_then_newest_snapshot() -> None:
    async def scenario() -> list[int]:
        publisher = RoutePublisher()
        await publisher.publish([endpoint("a")], [])
        watch = publisher.watch()
        first = await anext(watch)
        # Two changes before the watcher looks again: it gets only the newest.
        await publisher.publish([endpoint("b")], [])
        await publisher.publish([endpoint("c")], [])
        second = await anext(watch)
        await watch.aclose()
        assert [e.name for e in second.endpoints] == ["c"]
        return [first.version, second.version]

    assert asyncio.run(scenario()) == [1, 3]


def test_wait_applied_waits_for_named_subscribers_only() -> None:
    async def scenario() -> None:
        publisher = RoutePublisher()
        passive = publisher.watch()
        await anext(passive)
        # Nobody named is connected: nothing to wait for.
        version = await publisher.publish([endpoint("a")], [])
        assert await publisher.wait_applied(version, timeout=0.01)

        proxy = publisher.watch("proxy")
        await anext(proxy)
        version = await publisher.publish([endpoint("b")], [])
        waiter = asyncio.create_task(publisher.wait_applied(version, timeout=5))
        await asyncio.sleep(0)
        assert not waiter.done()
        await publisher.ack("proxy", version)
        assert await waiter

        # A subscriber that disconnects stops holding changes back.
        version = await publisher.publish([endpoint("c")], [])
        await proxy.aclose()
        assert await publisher.wait_applied(version, timeout=0.05)
        await passive.aclose()

    asyncio.run(scenario())


def test_a_router_that_let_a_wait_run_out_holds_no_change_back_until_it_catches_up() -> None:
    """A partitioned node's proxy keeps its stream open and never acks: it
    delays one admin call by the timeout, not every call after it."""

    async def scenario() -> None:
        publisher = RoutePublisher()
        proxy = publisher.watch("proxy@10.0.0.2")
        await anext(proxy)
        version = await publisher.publish([endpoint("a")], [])
        assert not await publisher.wait_applied(version, timeout=0.05)
        version = await publisher.publish([endpoint("b")], [])
        assert await publisher.wait_applied(version, timeout=0.05)
        # An old version acknowledged is not caught up yet.
        await publisher.ack("proxy@10.0.0.2", version - 1)
        version = await publisher.publish([endpoint("c")], [])
        assert await publisher.wait_applied(version, timeout=0.05)
        # Caught up, it is waited for again.
        await publisher.ack("proxy@10.0.0.2", version)
        version = await publisher.publish([endpoint("d")], [])
        assert not await publisher.wait_applied(version, timeout=0.05)
        await proxy.aclose()

    asyncio.run(scenario())


def test_acknowledgements_count_only_from_connected_routers() -> None:
    async def scenario() -> None:
        publisher = RoutePublisher()
        version = await publisher.publish([endpoint("a")], [])
        # Any id may be sent; one that is not watching is not remembered.
        await publisher.ack("late", version)
        late = publisher.watch("late")
        await anext(late)
        assert not await publisher.wait_applied(version, timeout=0.05)
        await publisher.ack("late", version)
        assert await publisher.wait_applied(version, timeout=0.05)
        await late.aclose()

    asyncio.run(scenario())


def test_an_acknowledgement_counts_only_for_published_versions() -> None:
    async def scenario() -> None:
        publisher = RoutePublisher()
        await publisher.require("proxy")
        await publisher.publish([endpoint("a")], [])
        # One acknowledgement of a version far ahead must not cover later changes.
        await publisher.ack("proxy", 2**62)
        version = await publisher.publish([endpoint("b")], [])
        assert not await publisher.wait_applied(version, timeout=0.05)
        await publisher.ack("proxy", version)
        assert await publisher.wait_applied(version, timeout=0.05)

    asyncio.run(scenario())
