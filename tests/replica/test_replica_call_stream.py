"""How the replica batches answers on one HandleStream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from turnout.replica.call_stream import ANSWER_BATCH_BYTES, serve_stream
from turnout.v1 import http_pb2, replica_pb2

MiB = 2**20


async def answered_together(sizes: list[int]) -> list[list[int]]:
    """The body sizes in each answer message, for calls that all finish at once."""
    release = asyncio.Event()

    async def respond(request: replica_pb2.HandleRequest) -> replica_pb2.HandleResponse:
        await release.wait()
        size = int(request.http.path.lstrip("/"))
        return replica_pb2.HandleResponse(http=http_pb2.HttpResponse(status=200, body=b"x" * size))

    async def messages() -> AsyncIterator[replica_pb2.HandleStreamRequest]:
        calls = [
            replica_pb2.StreamCall(
                id=n, request=replica_pb2.HandleRequest(http=http_pb2.HttpRequest(path=f"/{size}"))
            )
            for n, size in enumerate(sizes)
        ]
        yield replica_pb2.HandleStreamRequest(calls=calls)
        await asyncio.sleep(0.05)  # every call is running and waiting
        release.set()

    batches = []
    async for message in serve_stream(respond, messages()):
        batches.append([len(a.response.http.body) for a in message.answers])
    return batches


def test_small_answers_that_finish_together_share_one_message() -> None:
    batches = asyncio.run(answered_together([10] * 50))
    assert sum(len(b) for b in batches) == 50
    assert len(batches) <= 2


def test_large_answers_are_split_so_no_message_carries_much_more_than_the_budget() -> None:
    batches = asyncio.run(answered_together([3 * MiB] * 6 + [12 * MiB]))
    assert sorted(size for batch in batches for size in batch) == [3 * MiB] * 6 + [12 * MiB]
    for batch in batches:
        # One answer alone may be bigger than the budget; two never add up past it.
        assert len(batch) == 1 or sum(batch) <= ANSWER_BATCH_BYTES
