"""ReplicaLink against real gRPC servers on ephemeral ports: batching on the
stream, timeouts that cancel, and the fallback to unary Handle."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from sending_helpers import Replies

from turnout._internal.rpc import never_delivered
from turnout._sending import failures, replica_link
from turnout._sending.replica_link import ReplicaCallError, ReplicaLink
from turnout._sending.route_table import stable_fraction
from turnout._sending.sender import Sender
from turnout.replica.call_stream import CallStream, NoPayload, serve_stream
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import http_pb2, replica_pb2, replica_pb2_grpc


def request(text: str) -> replica_pb2.HandleRequest:
    return replica_pb2.HandleRequest(
        request_id=text, http=http_pb2.HttpRequest(method="GET", path="/", body=text.encode())
    )


def echo(message: replica_pb2.HandleRequest) -> replica_pb2.HandleResponse:
    return replica_pb2.HandleResponse(
        http=http_pb2.HttpResponse(status=200, body=message.http.body)
    )


class Unimplemented:
    """What a replica built against another replica.proto answers; a
    subclass overrides the methods it does implement."""

    async def Handle(
        self, request: replica_pb2.HandleRequest, context: Any
    ) -> replica_pb2.HandleResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        raise AssertionError("abort returned")

    async def Reconfigure(
        self, request: replica_pb2.ReconfigureRequest, context: Any
    ) -> replica_pb2.ReconfigureResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        raise AssertionError("abort returned")


class StreamReplica(Unimplemented, replica_pb2_grpc.ReplicaServiceServicer):
    """Echoes on HandleStream after ``delay`` seconds, noting each message's size."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls_per_message: list[int] = []
        self.cancelled: list[int] = []

    async def respond(self, message: replica_pb2.HandleRequest) -> replica_pb2.HandleResponse:
        if message.WhichOneof("payload") is None:
            raise NoPayload
        if not message.http.body.startswith(b"fast"):
            await asyncio.sleep(self.delay)
        return echo(message)

    async def HandleStream(
        self, request_iterator: AsyncIterator[replica_pb2.HandleStreamRequest], context: Any
    ) -> AsyncIterator[replica_pb2.HandleStreamResponse]:
        async def noted() -> AsyncIterator[replica_pb2.HandleStreamRequest]:
            async for message in request_iterator:
                if message.calls:
                    self.calls_per_message.append(len(message.calls))
                self.cancelled.extend(message.cancelled_ids)
                yield message

        async for batch in serve_stream(self.respond, noted()):
            yield batch


class UnaryOnlyReplica(Unimplemented, replica_pb2_grpc.ReplicaServiceServicer):
    """A replica built against a replica.proto without HandleStream."""

    def __init__(self) -> None:
        self.unary_calls = 0

    async def Handle(
        self, request: replica_pb2.HandleRequest, context: Any
    ) -> replica_pb2.HandleResponse:
        self.unary_calls += 1
        return echo(request)

    async def HandleStream(
        self, request_iterator: AsyncIterator[replica_pb2.HandleStreamRequest], context: Any
    ) -> AsyncIterator[replica_pb2.HandleStreamResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        yield replica_pb2.HandleStreamResponse()  # never reached: abort raises


Scenario = Callable[[ReplicaLink], Awaitable[None]]


def with_replica(
    servicer: replica_pb2_grpc.ReplicaServiceServicer,
    scenario: Scenario,
    max_receive_bytes: int | None = None,
) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        replica_pb2_grpc.add_ReplicaServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        link = ReplicaLink(f"127.0.0.1:{port}", max_receive_bytes)
        try:
            await scenario(link)
        finally:
            await link.close(None)
            await server.stop(None)

    asyncio.run(main())


def test_concurrent_requests_share_messages_and_get_their_own_answers() -> None:
    replica = StreamReplica(delay=0.01)

    async def scenario(link: ReplicaLink) -> None:
        texts = [f"r{i}" for i in range(200)]
        replies = await asyncio.gather(*(link.handle(request(t), None) for t in texts))
        assert [r.http.body.decode() for r in replies] == texts
        assert link.in_flight == 0

    with_replica(replica, scenario)
    assert sum(replica.calls_per_message) == 200
    # 200 requests made at once do not need 200 messages.
    assert len(replica.calls_per_message) < 200
    assert max(replica.calls_per_message) > 1


def test_a_lone_request_is_sent_at_once_and_answered() -> None:
    replica = StreamReplica()

    async def scenario(link: ReplicaLink) -> None:
        for text in ("one", "two", "three"):
            reply = await link.handle(request(text), 5.0)
            assert reply.http.body == text.encode()

    with_replica(replica, scenario)
    assert replica.calls_per_message == [1, 1, 1]


async def received(replica: StreamReplica, count: int) -> None:
    """Until the replica has been sent ``count`` calls in all."""
    while sum(replica.calls_per_message) < count:
        await asyncio.sleep(0.001)


async def issue_one_by_one(link: ReplicaLink, texts: list[str]) -> list[asyncio.Task[Any]]:
    """Each call started in a loop turn of its own, as HTTP requests arrive."""
    tasks = []
    for text in texts:
        tasks.append(asyncio.create_task(link.handle(request(text), None)))
        await asyncio.sleep(0)
    return tasks


def test_with_many_calls_in_flight_new_ones_wait_for_an_answer_and_leave_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A hold long enough that only an answer can end it.
    monkeypatch.setattr(replica_link, "HOLD_S", 30.0)
    replica = StreamReplica(delay=0.3)

    async def scenario(link: ReplicaLink) -> None:
        slow = [asyncio.create_task(link.handle(request(f"s{i}"), None)) for i in range(8)]
        await received(replica, 8)
        fast = await issue_one_by_one(link, [f"fast{i}" for i in range(5)])
        replies = await asyncio.gather(*fast, *slow)
        assert [r.http.body.decode() for r in replies[:5]] == [f"fast{i}" for i in range(5)]

    with_replica(replica, scenario)
    assert replica.calls_per_message[-2:] == [8, 5]


def test_with_few_calls_in_flight_a_new_one_is_sent_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replica_link, "HOLD_S", 30.0)
    replica = StreamReplica(delay=2.0)

    async def scenario(link: ReplicaLink) -> None:
        slow = [asyncio.create_task(link.handle(request(f"s{i}"), None)) for i in range(3)]
        await received(replica, 3)
        fast = asyncio.create_task(link.handle(request("fast"), None))
        done, _ = await asyncio.wait([fast, *slow], return_when=asyncio.FIRST_COMPLETED)
        assert done == {fast}
        await asyncio.gather(*slow)

    with_replica(replica, scenario)
    assert replica.calls_per_message == [3, 1]


def test_a_request_past_its_timeout_fails_and_is_cancelled_on_the_replica() -> None:
    replica = StreamReplica(delay=5.0)

    async def scenario(link: ReplicaLink) -> None:
        with pytest.raises(ReplicaCallError) as caught:
            await link.handle(request("slow"), 0.2)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        replica.delay = 0.0
        # The stream stays usable for the next request.
        assert (await link.handle(request("next"), 5.0)).http.body == b"next"

    with_replica(replica, scenario)
    assert replica.cancelled == [1]


def test_the_replica_enforces_the_timeout_it_is_sent() -> None:
    answers: list[replica_pb2.StreamAnswer] = []

    async def respond(message: replica_pb2.HandleRequest) -> replica_pb2.HandleResponse:
        if message.WhichOneof("payload") is None:
            raise NoPayload
        await asyncio.sleep(float(message.http.body or b"0"))
        return echo(message)

    async def main() -> None:
        stream = CallStream(respond)

        async def sender() -> AsyncIterator[replica_pb2.HandleStreamRequest]:
            yield replica_pb2.HandleStreamRequest(
                calls=[
                    replica_pb2.StreamCall(id=1, request=request("10"), timeout=0.1),
                    replica_pb2.StreamCall(id=2, request=replica_pb2.HandleRequest()),
                    replica_pb2.StreamCall(id=3, request=request("0"), timeout=5.0),
                    replica_pb2.StreamCall(id=4, request=request("10")),
                ]
            )
            await asyncio.sleep(0.3)
            yield replica_pb2.HandleStreamRequest(cancelled_ids=[4])

        reader = asyncio.create_task(stream.read(sender()))
        async for batch in stream.answers():
            answers.extend(batch.answers)
        await reader

    asyncio.run(asyncio.wait_for(main(), 10))
    by_id = {a.id: a for a in answers}
    assert sorted(by_id) == [1, 2, 3]  # 4 was cancelled: no answer
    assert by_id[1].failure == replica_pb2.CALL_FAILURE_DEADLINE_EXCEEDED
    assert by_id[2].failure == replica_pb2.CALL_FAILURE_INVALID_ARGUMENT
    assert by_id[3].response.http.body == b"0"


def test_a_replica_without_handle_stream_gets_unary_calls() -> None:
    replica = UnaryOnlyReplica()

    async def scenario(link: ReplicaLink) -> None:
        replies = await asyncio.gather(*(link.handle(request(f"u{i}"), 5.0) for i in range(5)))
        assert [r.http.body for r in replies] == [f"u{i}".encode() for i in range(5)]
        assert (await link.handle(request("later"), 5.0)).http.body == b"later"

    with_replica(replica, scenario)
    assert replica.unary_calls == 6


def test_a_stream_to_nowhere_is_never_delivered() -> None:
    async def main() -> None:
        link = ReplicaLink("127.0.0.1:1")
        try:
            with pytest.raises(ReplicaCallError) as caught:
                await link.handle(request("x"), 5.0)
        finally:
            await link.close(None)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert never_delivered(caught.value.code, caught.value.details)

    asyncio.run(main())


class TimingOutReplica(Unimplemented, replica_pb2_grpc.ReplicaServiceServicer):
    """Answers every call on the stream with "the call's timeout passed"."""

    async def HandleStream(
        self, request_iterator: AsyncIterator[replica_pb2.HandleStreamRequest], context: Any
    ) -> AsyncIterator[replica_pb2.HandleStreamResponse]:
        async for message in request_iterator:
            yield replica_pb2.HandleStreamResponse(
                answers=[
                    replica_pb2.StreamAnswer(
                        id=call.id, failure=replica_pb2.CALL_FAILURE_DEADLINE_EXCEEDED
                    )
                    for call in message.calls
                ]
            )


def test_each_failure_raises_an_exception_of_its_own() -> None:
    caught: list[ReplicaCallError] = []
    depths: list[int] = []

    async def scenario(link: ReplicaLink) -> None:
        for i in range(5):
            try:
                await link.handle(request(f"r{i}"), 5.0)
            except ReplicaCallError as exc:
                caught.append(exc)
                depths.append(len(traceback.extract_tb(exc.__traceback__)))

    with_replica(TimingOutReplica(), scenario)
    assert len(caught) == 5
    assert all(exc.code == grpc.StatusCode.DEADLINE_EXCEEDED for exc in caught)
    # A shared exception would be the same object, its traceback one raise longer each time.
    assert len({id(exc) for exc in caught}) == 5
    assert len(set(depths)) == 1


class FailingStreamReplica(Unimplemented, replica_pb2_grpc.ReplicaServiceServicer):
    """Takes calls on HandleStream without answering; once ``fail`` is set,
    ends the stream as ``how`` says: aborts it with that status code, or
    ("too large") answers its first call with more than the proxy receives."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.received = 0
        self.fail = asyncio.Event()

    async def HandleStream(
        self, request_iterator: AsyncIterator[replica_pb2.HandleStreamRequest], context: Any
    ) -> AsyncIterator[replica_pb2.HandleStreamResponse]:
        async def take() -> None:
            async for message in request_iterator:
                self.received += len(message.calls)

        taking = asyncio.create_task(take())
        try:
            await self.fail.wait()
            if self.how == "too large":
                big = http_pb2.HttpResponse(status=200, body=b"x" * (TOO_LARGE * 4))
                answer = replica_pb2.HandleResponse(http=big)
                yield replica_pb2.HandleStreamResponse(
                    answers=[replica_pb2.StreamAnswer(id=1, response=answer)]
                )
                await asyncio.sleep(30)  # the proxy ends the stream first
            elif self.how != "link closed":
                await context.abort(getattr(grpc.StatusCode, self.how), "the replica gave up")
            await asyncio.sleep(30)
        finally:
            taking.cancel()


# The proxy's receive limit in the "too large" case (bytes).
TOO_LARGE = 16 * 1024


@pytest.mark.parametrize(
    ("how", "code"),
    [
        ("too large", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("link closed", grpc.StatusCode.CANCELLED),
        ("INTERNAL", grpc.StatusCode.INTERNAL),
        ("PERMISSION_DENIED", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_a_call_not_yet_sent_when_its_stream_fails_is_never_delivered_whatever_the_code(
    monkeypatch: pytest.MonkeyPatch, how: str, code: grpc.StatusCode
) -> None:
    # With HOLD_IN_FLIGHT calls unanswered the writer holds the next one, and
    # for 30 s only an answer would end the hold: it is still unsent when
    # the stream fails.
    monkeypatch.setattr(replica_link, "HOLD_S", 30.0)
    replica = FailingStreamReplica(how)

    async def scenario(link: ReplicaLink) -> None:
        sent = [
            asyncio.create_task(link.handle(request(f"s{i}"), None))
            for i in range(replica_link.HOLD_IN_FLIGHT)
        ]
        while replica.received < len(sent):
            await asyncio.sleep(0.001)
        held = asyncio.create_task(link.handle(request("held"), None))
        await asyncio.sleep(0.05)  # long enough to be written, were it not held
        assert replica.received == len(sent)
        if how == "link closed":
            # A draining link closed under its calls once its grace is over.
            await link.close(0.01)
        else:
            replica.fail.set()
        outcomes = await asyncio.gather(held, *sent, return_exceptions=True)
        assert all(isinstance(o, ReplicaCallError) for o in outcomes), outcomes
        unsent, *others = (o for o in outcomes if isinstance(o, ReplicaCallError))
        # The replica never saw it: another replica may take it ...
        assert unsent.code == grpc.StatusCode.UNAVAILABLE
        assert never_delivered(unsent.code, unsent.details)
        # ... and the log still says what ended the stream.
        assert code.name in unsent.details
        # The calls it did see may have run: they fail with the stream's code.
        assert {o.code for o in others} == {code}
        assert not any(never_delivered(o.code, o.details) for o in others)

    with_replica(replica, scenario, max_receive_bytes=TOO_LARGE)


def test_the_sender_retries_a_call_not_yet_sent_on_another_replica(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the link's "never delivered" is for: the call held when its
    # replica's stream fails (here INTERNAL) is answered by the other replica,
    # while the calls that replica saw fail with the stream's code.
    monkeypatch.setattr(replica_link, "HOLD_S", 30.0)
    failing, answering = FailingStreamReplica("INTERNAL"), StreamReplica()

    async def main() -> None:
        servers, addresses = [], []
        for servicer in (failing, answering):
            server = grpc.aio.server()
            replica_pb2_grpc.add_ReplicaServiceServicer_to_server(servicer, server)
            addresses.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
            await server.start()
            servers.append(server)
        it: Sender[replica_pb2.HandleResponse] = Sender(ReplicaLink, Replies())
        replicas = [
            pb.ReplicaTarget(replica_id=f"b#{i}", address=a) for i, a in enumerate(addresses)
        ]
        it.apply(
            pb.RoutingSnapshot(
                version=1,
                endpoints=[
                    pb.Endpoint(name="e", traffic=[pb.TrafficWeight(backend="b", weight=1)])
                ],
                backends=[pb.BackendTargets(tag="b", replicas=replicas)],
            )
        )
        # A key that the failing replica wins: every call goes there first.
        key = next(
            k
            for k in (f"k{i}" for i in range(1000))
            if stable_fraction(k, "b", "b#0") > stable_fraction(k, "b", "b#1")
        )
        try:
            route = await it.route_named("e", 5.0, None)
            sent = [
                asyncio.create_task(it.send(route, request(f"s{i}"), key))
                for i in range(replica_link.HOLD_IN_FLIGHT)
            ]
            while failing.received < len(sent):
                await asyncio.sleep(0.001)
            held = asyncio.create_task(it.send(route, request("held"), key))
            await asyncio.sleep(0.05)
            failing.fail.set()
            reply = await held
            assert reply.http.body == b"held"
            outcomes = await asyncio.gather(*sent, return_exceptions=True)
            assert all(
                isinstance(o, failures.CallFailed) and o.code == grpc.StatusCode.INTERNAL
                for o in outcomes
            ), outcomes
        finally:
            await it.close()
            for server in servers:
                await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), 30))
