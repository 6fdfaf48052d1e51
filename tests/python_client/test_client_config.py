"""BackendConfig: the dict form Ray Serve users write, and its checks."""

from __future__ import annotations

import pytest

import turnout
from turnout import BackendConfig


def test_dict_and_dataclass_forms_agree() -> None:
    from_dict = BackendConfig.coerce({"num_replicas": 2, "max_concurrent_queries": 8})
    assert from_dict == BackendConfig(num_replicas=2, max_concurrent_queries=8)
    assert BackendConfig.coerce(None) == BackendConfig()


def test_only_given_fields_travel() -> None:
    message = BackendConfig(num_replicas=2).to_proto()
    assert message.HasField("num_replicas")
    assert not message.HasField("max_concurrent_queries")
    assert BackendConfig.from_proto(message) == BackendConfig(num_replicas=2)


def test_user_config_round_trips_as_json() -> None:
    config = BackendConfig(user_config={"threshold": 3, "labels": ["a", "b"]})
    assert BackendConfig.from_proto(config.to_proto()).user_config == {
        "threshold": 3,
        "labels": ["a", "b"],
    }


def test_unknown_keys_are_refused_with_the_known_ones_listed() -> None:
    with pytest.raises(turnout.InvalidArgumentError, match="num_replicas"):
        BackendConfig.coerce({"num_replica": 2})


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"num_replicas": 0}, turnout.InvalidArgumentError),
        ({"num_replicas": "2"}, TypeError),
        ({"num_replicas": True}, TypeError),
        ({"max_concurrent_queries": -1}, turnout.InvalidArgumentError),
        ({"batch_wait_timeout": -0.5}, turnout.InvalidArgumentError),
        ({"batch_wait_timeout": "1"}, TypeError),
        ({"user_config": object()}, TypeError),
    ],
)
def test_bad_values(fields: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        BackendConfig.coerce(fields)


def test_config_of_wrong_type() -> None:
    with pytest.raises(TypeError):
        BackendConfig.coerce([("num_replicas", 2)])  # type: ignore[arg-type]
