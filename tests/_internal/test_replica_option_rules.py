"""Replica options: one check for create_backend and deploy files (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

import turnout
from turnout._internal import validation
from turnout.deploy import DeployFileError, parse
from turnout.v1 import controller_pb2 as pb


def _deploy_problems(options: Any) -> list[str]:
    document = {"backends": {"b": {"import_path": "m:f", "replica_options": options}}}
    with pytest.raises(DeployFileError) as caught:
        parse(document)
    return caught.value.problems


@pytest.mark.parametrize(
    ("options", "error", "where"),
    [
        ({"num_cpus": "2"}, TypeError, "num_cpus"),
        ({"num_gpus": True}, TypeError, "num_gpus"),
        ({"env": {"PORT": 80}}, TypeError, "env"),
        ({"memory": 1.5}, TypeError, "memory"),
        ({"memory": -1}, turnout.InvalidArgumentError, "memory"),
        ({"cpus": 1}, turnout.InvalidArgumentError, ""),
        ({"num_cpus": -1}, turnout.InvalidArgumentError, ""),
        ({"memory": 1024}, turnout.InvalidArgumentError, ""),
        ({"env": {"A=B": "x"}}, turnout.InvalidArgumentError, ""),
        ({"resources": {"x": "1"}}, TypeError, "resources"),
        ({"max_replicas_per_node": -2}, turnout.InvalidArgumentError, "max_replicas_per_node"),
        ({"node_selector": {"zone": ""}}, turnout.InvalidArgumentError, ""),
        ({"runtime_env": {"conda": "x"}}, turnout.InvalidArgumentError, ""),
    ],
)
def test_create_backend_and_deploy_files_give_the_same_reason(
    options: dict[str, Any], error: type[Exception], where: str
) -> None:
    with pytest.raises(error) as raised:
        validation.replica_options_from(options)
    message = str(raised.value)
    at = "backends.b.replica_options" + (f".{where}" if where else "")
    reason = message.removeprefix(f"{where} ") if where else message
    assert _deploy_problems(options) == [f"{at}: {reason}"]


def test_a_deploy_file_lists_every_bad_option() -> None:
    problems = _deploy_problems({"num_gpus": "two", "memory": -1, "env": []})
    assert [p.split(":", 1)[0] for p in problems] == [
        "backends.b.replica_options.num_gpus",
        "backends.b.replica_options.env",
        "backends.b.replica_options.memory",
    ]


def test_good_options_become_the_message_and_back() -> None:
    given = {"num_cpus": 1, "num_gpus": 0.5, "env": {"MODEL": "tiny"}, "memory": 2**30}
    message = validation.replica_options_from(given)
    assert message == pb.ReplicaOptions(
        num_cpus=1.0, num_gpus=0.5, env={"MODEL": "tiny"}, memory_bytes=2**30
    )
    assert validation.replica_options_dict(message) == given
    assert validation.replica_options_from(None) == pb.ReplicaOptions()
    with pytest.raises(TypeError, match="must be a dict"):
        validation.replica_options_from([("num_cpus", 1)])  # type: ignore[arg-type]
