"""Malformed and mutated requests to every ControllerService method (Shutdown
and the WatchRoutes stream aside), from a fixed seed: each gets a proper status
within its deadline, never UNKNOWN or INTERNAL, and the controller serves a
normal request afterwards.

The instance runs at most ``SMALL_MAX_REPLICAS`` replicas, and fuzzed backend
specs are made invalid (but for the one backend created on purpose), so the
fuzz can never start replicas without bound.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from typing import Any

import grpc
from conftest import SMALL_MAX_REPLICAS
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

import turnout
from turnout._internal import rpc
from turnout.v1 import controller_pb2 as pb

SEED = 20261201
CALLS = 800
CALL_TIMEOUT_S = 10.0
TIME_BUDGET_S = 60.0
ACCEPTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SKIPPED = {"Shutdown", "WatchRoutes"}
SERVICE = pb.DESCRIPTOR.services_by_name["ControllerService"]
# Names the fuzz also aims at, so that calls reach past NOT_FOUND.
KNOWN_BACKEND, KNOWN_ENDPOINT = "fz", "fz-ep"

STRINGS = [
    "",
    "a",
    KNOWN_BACKEND,
    KNOWN_ENDPOINT,
    "/",
    "/fz",
    "/-/routes",
    "GET",
    "post",
    "x" * 10_000,
    "é\u2028\x00",
    "importable_backends:Greeter",
    "[" * 3000 + "]" * 3000,
    '{"a": ' * 200 + "1" + "}" * 200,
    "[1, 2]",
    "null",
    "not json",
]
NUMBERS = [0, 1, 2, 3, -1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 10_000]
FLOATS = [0.0, 0.5, 1.0, -1.0, 1e-9, 1e300, math.nan, math.inf, -math.inf, 86401.0]


def random_value(rng: random.Random, field: FieldDescriptor, depth: int) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        return random_message(rng, field.message_type, depth + 1)
    if kind == FieldDescriptor.TYPE_STRING:
        return rng.choice(STRINGS) if rng.random() < 0.8 else rng.randbytes(8).hex()
    if kind == FieldDescriptor.TYPE_BYTES:
        return rng.choice([b"", b"\x80\x04", rng.randbytes(rng.randrange(64))])
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice(FLOATS)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return rng.choice([v.number for v in field.enum_type.values])
    value = rng.choice(NUMBERS)
    unsigned = kind in (
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
    )
    bits = (
        64
        if field.cpp_type in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)
        else 32
    )
    if unsigned:
        return abs(value) % 2**bits
    return max(-(2 ** (bits - 1)), min(value, 2 ** (bits - 1) - 1))


def random_message(rng: random.Random, descriptor: Descriptor, depth: int = 0) -> Message:
    cls = _message_class(descriptor)
    message = cls()
    if depth > 3:
        return message
    for field in descriptor.fields:
        if rng.random() < 0.4:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            target = getattr(message, field.name)
            for _ in range(rng.randrange(3)):
                key = random_value(rng, key_field, depth)
                if value_field.message_type is not None:
                    target[key].CopyFrom(random_value(rng, value_field, depth))
                else:
                    target[key] = random_value(rng, value_field, depth)
        elif field.is_repeated:
            items = [random_value(rng, field, depth) for _ in range(rng.randrange(4))]
            getattr(message, field.name).extend(items)
        elif field.message_type is not None:
            getattr(message, field.name).CopyFrom(random_value(rng, field, depth))
        else:
            setattr(message, field.name, random_value(rng, field, depth))
    return message


def _message_class(descriptor: Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def defuse(request: Message) -> None:
    """Keep the fuzz from starting replicas: the instance is full (the known
    backend has every replica it allows, so a valid CreateBackend is refused
    for capacity after every check ran), and nothing may roll, scale or
    delete the known backend."""
    if isinstance(request, pb.UpdateBackendRequest):
        request.spec.import_path = "not a valid path"
    if isinstance(request, pb.UpdateBackendConfigRequest):
        for field in ("num_replicas", "max_concurrent_queries", "max_batch_size"):
            request.config.ClearField(field)
        request.config.ClearField("batch_wait_timeout")
    if isinstance(request, pb.DeleteBackendRequest | pb.DeleteEndpointRequest):
        field = "tag" if isinstance(request, pb.DeleteBackendRequest) else "name"
        if getattr(request, field) in (KNOWN_BACKEND, KNOWN_ENDPOINT):
            setattr(request, field, "other")


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Flip, drop or insert a few bytes: wrong wire types, truncated fields."""
    buffer = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        action = rng.randrange(3)
        position = rng.randrange(len(buffer) + 1)
        if action == 0 and buffer:
            buffer[min(position, len(buffer) - 1)] ^= 1 << rng.randrange(8)
        elif action == 1 and buffer:
            del buffer[min(position, len(buffer) - 1)]
        else:
            buffer.insert(position, rng.randrange(256))
    return bytes(buffer)


def fuzzed_request(rng: random.Random, method: Any) -> bytes:
    roll = rng.random()
    if roll < 0.2:
        return rng.randbytes(rng.randrange(200))
    request = random_message(rng, method.input_type)
    defuse(request)
    data = request.SerializeToString()
    if roll < 0.45:
        return mutate(rng, data)
    return data


def clean(client: turnout.Client) -> None:
    for name in client.list_endpoints():
        client.delete_endpoint(name)
    for tag in client.list_backends():
        client.delete_backend(tag)


def test_fuzzed_admin_requests_get_proper_statuses(small: turnout.Client) -> None:
    try:
        fuzz(small)
    finally:
        clean(small)


def fuzz(small: turnout.Client) -> None:
    small.create_backend(
        KNOWN_BACKEND, lambda request: "fz", config={"num_replicas": SMALL_MAX_REPLICAS}
    )
    small.create_endpoint(KNOWN_ENDPOINT, KNOWN_BACKEND, route="/fz")
    rng = random.Random(SEED)
    methods = [m for m in SERVICE.methods if m.name not in SKIPPED]
    seen: Counter[tuple[str, str]] = Counter()
    wrong: list[tuple[str, str, str]] = []
    began = time.monotonic()
    with rpc.channel(
        small.controller_address, rpc.security_for(small.controller_address)
    ) as channel:
        calls: dict[str, grpc.UnaryUnaryMultiCallable[bytes, bytes]] = {
            m.name: channel.unary_unary(
                f"/{SERVICE.full_name}/{m.name}",
                request_serializer=None,
                response_deserializer=None,
            )
            for m in methods
        }
        for _ in range(CALLS):
            if time.monotonic() - began > TIME_BUDGET_S:
                break
            method = rng.choice(methods)
            data = fuzzed_request(rng, method)
            try:
                calls[method.name](data, timeout=CALL_TIMEOUT_S)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in ACCEPTED:
                    wrong.append((method.name, code.name, (exc.details() or "")[:200]))
            seen[(method.name, code.name)] += 1
    assert not wrong, wrong[:10]
    assert sum(seen.values()) >= CALLS // 2, "the fuzz ran out of time"
    # Still healthy, still serving, never beyond its capacity.
    assert len(small.list_replicas()) == SMALL_MAX_REPLICAS
    assert small.get_handle(KNOWN_ENDPOINT).remote().result(timeout=30) == "fz"
    small.update_backend_config(KNOWN_BACKEND, {"num_replicas": 1})
    small.create_backend("fz-after", lambda request: "after")
    small.create_endpoint("fz-after", "fz-after")
    assert small.get_handle("fz-after").remote().result(timeout=30) == "after"
