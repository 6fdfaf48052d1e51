"""The backend-config field table, and everything derived from it (no sockets)."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest

import turnout
from turnout._internal import backend_fields, validation
from turnout._internal.backend_fields import FIELDS, Change, Kind, SenderLimits
from turnout.config import DEFAULTS, BackendConfig
from turnout.v1 import controller_pb2 as pb

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_backend_config_has_exactly_the_fields_of_the_table_in_order() -> None:
    assert [f.name for f in dataclasses.fields(BackendConfig)] == list(backend_fields.NAMES)
    hints = typing.get_type_hints(BackendConfig)
    python_type = {
        Kind.COUNT: int | None,
        Kind.SECONDS: float | None,
        Kind.JSON: typing.Any,
        Kind.METHOD_NAMES: list[str] | None,
        Kind.AUTOSCALING: dict[str, Any] | None,
    }
    for row in FIELDS:
        assert hints[row.name] == python_type[row.kind], row.name


def test_every_field_is_in_the_proto_with_presence() -> None:
    wire = pb.BackendConfig.DESCRIPTOR.fields_by_name
    assert sorted(wire) == sorted(row.wire_name for row in FIELDS)
    for row in FIELDS:
        assert wire[row.wire_name].has_presence, row.wire_name


def test_defaults_come_from_the_table_everywhere() -> None:
    table = {row.name: row.default for row in FIELDS}
    assert DEFAULTS.to_dict() == table
    # What the controller fills in for a create that sets nothing.
    assert BackendConfig.from_proto(validation.full_config(pb.BackendConfig())) == DEFAULTS
    assert SenderLimits() == SenderLimits(
        max_concurrent_queries=100, max_queued_requests=1000, queue_timeout=30.0
    )


def _client(name: str, value: object) -> BackendConfig:
    fields: dict[str, Any] = {name: value}
    return BackendConfig(**fields)


def _wire(name: str, value: float) -> pb.BackendConfig:
    message = pb.BackendConfig()
    setattr(message, name, value)
    return message


def _bad_values(row: backend_fields.BackendField) -> list[float]:
    if row.kind is Kind.COUNT:
        return [0, backend_fields.MAX_COUNT + 1]
    below = [row.minimum - 0.01] if row.minimum > 0 else [-1.0]
    return [*below, row.maximum + 1, math.inf, math.nan]


@pytest.mark.parametrize("row", backend_fields.NUMBER_FIELDS, ids=lambda r: r.name)
def test_client_and_controller_refuse_the_same_values_with_the_same_message(
    row: backend_fields.BackendField,
) -> None:
    for value in _bad_values(row):
        if row.kind is Kind.COUNT and value > backend_fields.MAX_COUNT:
            # The proto cannot even carry it: only the client sees such a value.
            with pytest.raises(turnout.InvalidArgumentError, match="at most 4294967295"):
                _client(row.name, value)
            continue
        with pytest.raises(turnout.InvalidArgumentError) as client:
            _client(row.name, value)
        with pytest.raises(turnout.InvalidArgumentError) as controller:
            validation.config_update(_wire(row.name, value))
        assert str(client.value) == str(controller.value), value
        assert str(client.value).startswith(row.name)
    # The bounds themselves are allowed.
    edge = int(row.minimum) if row.kind is Kind.COUNT else row.minimum
    assert getattr(_client(row.name, edge), row.name) == edge
    validation.config_update(_wire(row.name, edge))


def test_a_count_beyond_what_the_proto_carries_is_refused_when_the_config_is_made() -> None:
    # It used to pass BackendConfig and fail later, in to_proto, with a bare ValueError.
    with pytest.raises(turnout.InvalidArgumentError, match="num_replicas must be at most"):
        BackendConfig(num_replicas=2**32)


def test_only_http_call_methods_needs_new_replicas() -> None:
    assert [r.name for r in FIELDS if r.change is Change.NEW_REPLICAS] == ["http_call_methods"]
    assert backend_fields.NEW_REPLICA_FIELDS == ("http_call_methods",)
    assert backend_fields.RECONFIGURE_LIMITS == (
        "max_concurrent_queries",
        "max_batch_size",
        "batch_wait_timeout",
    )


def _full(**fields: Any) -> pb.BackendConfig:
    return validation.full_config(BackendConfig(**fields).to_proto())


def test_needs_new_replicas_only_when_a_field_replicas_read_at_start_changes() -> None:
    old = _full()
    assert not backend_fields.needs_new_replicas(old, old)
    for live in (
        {"num_replicas": 3},
        {"max_concurrent_queries": 4},
        {"queue_timeout": 1},
        {"user_config": {"a": 1}},
    ):
        assert not backend_fields.needs_new_replicas(old, _full(**live)), live
    assert backend_fields.needs_new_replicas(old, _full(http_call_methods=["predict"]))
    methods = _full(http_call_methods=["predict"])
    assert not backend_fields.needs_new_replicas(methods, _full(http_call_methods=["predict"]))


def test_an_empty_method_list_differs_from_none_given() -> None:
    # Unset = every public method; [] = handles only. Comparing the two
    # submessages reads them as equal, so the replicas kept the old rule.
    assert backend_fields.needs_new_replicas(_full(), _full(http_call_methods=[]))


def test_reconfigure_sends_only_the_live_numbers_that_changed() -> None:
    old = _full(max_batch_size=2)
    new = _full(max_batch_size=2, max_concurrent_queries=7, batch_wait_timeout=0.5, num_replicas=4)
    assert backend_fields.reconfigure_limits(old, new) == {
        "max_concurrent_queries": 7,
        "batch_wait_timeout": 0.5,
    }
    assert backend_fields.reconfigure_limits(old, old) == {}


def test_sender_limits_from_a_snapshot_and_from_a_config() -> None:
    # A snapshot entry without limits (0 = not sent) gets the defaults.
    assert backend_fields.sender_limits(pb.BackendTargets(tag="a")) == SenderLimits()
    sent = pb.BackendTargets(
        tag="a", max_concurrent_queries=3, max_queued_requests=5, queue_timeout=0.25
    )
    assert backend_fields.sender_limits(sent) == SenderLimits(3, 5, 0.25)
    config = BackendConfig(max_concurrent_queries=3).to_proto()
    assert backend_fields.sender_limits(config) == SenderLimits(max_concurrent_queries=3)
    # What the controller puts in each snapshot entry, read back the same.
    targets = backend_fields.with_sender_limits(pb.BackendTargets(tag="a"), _full(queue_timeout=2))
    assert backend_fields.sender_limits(targets) == SenderLimits(queue_timeout=2.0)


def test_a_queue_timeout_of_0_reaches_senders_as_0() -> None:
    # BackendTargets.queue_timeout has no presence: queue_timeout_set says
    # that its 0 is the backend's (refuse at once), not "unset".
    targets = backend_fields.with_sender_limits(pb.BackendTargets(tag="a"), _full(queue_timeout=0))
    assert targets.queue_timeout == 0 and targets.queue_timeout_set
    received = pb.BackendTargets.FromString(targets.SerializeToString())
    assert backend_fields.sender_limits(received) == SenderLimits(queue_timeout=0.0)
    # A snapshot from a controller without the flag: its 0 is the default.
    older = pb.BackendTargets(tag="a", queue_timeout=0)
    assert backend_fields.sender_limits(older) == SenderLimits()


def test_the_docstring_names_every_field_and_its_default() -> None:
    doc = BackendConfig.__doc__ or ""
    for row in FIELDS:
        assert f"{row.name}:" in doc, row.name
        if row.default is not None:
            assert f"(default {row.default:g})" in doc, row.name


def _doc_table() -> list[list[str]]:
    text = (DOCS / "runtime.md").read_text(encoding="utf-8")
    section = text.split("## Config fields at a glance", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows]


def test_the_docs_table_lists_exactly_the_fields_with_their_defaults_and_bounds() -> None:
    expected = [
        [
            row.name,
            row.kind.value,
            "unset" if row.default is None else f"{row.default:g}",
            row.bounds,
            row.unit or "—",
            row.change.value,
        ]
        for row in FIELDS
    ]
    assert _doc_table() == expected


def test_the_deploy_file_table_names_every_field() -> None:
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    line = next(x for x in text.splitlines() if x.startswith("| `backends.NAME.config`"))
    named = re.findall(r"`(\w+)`", line.split("fields of `BackendConfig`:", 1)[1])
    assert sorted(named) == sorted(backend_fields.NAMES)


def test_a_replica_reads_each_number_or_its_default() -> None:
    config = BackendConfig(max_batch_size=8, batch_wait_timeout=0.25).to_proto()
    assert backend_fields.count(config, "max_batch_size") == 8
    assert backend_fields.count(config, "max_concurrent_queries") == 100
    assert backend_fields.seconds(config, "batch_wait_timeout") == 0.25
    assert backend_fields.seconds(config, "graceful_shutdown_timeout") == 20.0
    with pytest.raises(KeyError):
        backend_fields.seconds(config, "max_batch_size")
