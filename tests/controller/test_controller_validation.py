"""Validation rules of the controller, without processes or sockets."""

from __future__ import annotations

import math

import pytest

from turnout._internal import validation
from turnout.errors import InvalidArgumentError
from turnout.v1 import controller_pb2 as pb


@pytest.mark.parametrize("value", ["", "x" * 257, "tab\there"])
def test_bad_names_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgumentError):
        validation.name(value, "backend tag")


def test_names_may_hold_any_printable_text() -> None:
    assert validation.name("my model v2.1", "tag") == "my model v2.1"


@pytest.mark.parametrize("value", ["simple", "/a?b", "/a#b", "/a b", "/-/routes", "/-"])
def test_bad_routes_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgumentError):
        validation.route(value)


def test_routes_and_no_route() -> None:
    assert validation.route("/api/v1/predict") == "/api/v1/predict"
    assert validation.route("") == ""


def test_methods_are_normalised() -> None:
    assert validation.methods([]) == ["GET"]
    assert validation.methods(["get", "POST", "Get"]) == ["GET", "POST"]
    with pytest.raises(InvalidArgumentError, match="FETCH"):
        validation.methods(["FETCH"])


def test_config_defaults_fill_unset_fields() -> None:
    config = validation.full_config(pb.BackendConfig(num_replicas=3))
    assert config.num_replicas == 3
    assert config.max_concurrent_queries == validation.DEFAULT_MAX_CONCURRENT_QUERIES
    assert config.max_batch_size == 1
    assert config.batch_wait_timeout == 0.0
    assert not config.HasField("user_config_json")


@pytest.mark.parametrize(
    "config",
    [
        pb.BackendConfig(num_replicas=0),
        pb.BackendConfig(max_concurrent_queries=0),
        pb.BackendConfig(max_batch_size=0),
        pb.BackendConfig(batch_wait_timeout=-1),
        pb.BackendConfig(batch_wait_timeout=math.inf),
        pb.BackendConfig(user_config_json="{not json"),
        pb.BackendConfig(health_check_period=0),
        pb.BackendConfig(health_check_failure_threshold=0),
        pb.BackendConfig(graceful_shutdown_timeout=-1),
        pb.BackendConfig(queue_timeout=math.nan),
        pb.BackendConfig(max_queued_requests=0),
    ],
)
def test_bad_configs_are_refused(config: pb.BackendConfig) -> None:
    with pytest.raises(InvalidArgumentError):
        validation.config_update(config)


def test_replica_options_are_checked() -> None:
    ok = pb.ReplicaOptions(num_cpus=1.5, num_gpus=0.5, env={"MODEL": "small"})
    assert validation.replica_options(ok) is ok
    for bad in (
        pb.ReplicaOptions(num_cpus=-1),
        pb.ReplicaOptions(num_gpus=math.nan),
        pb.ReplicaOptions(num_gpus=1.5),
        pb.ReplicaOptions(env={"A=B": "x"}),
        pb.ReplicaOptions(env={"": "x"}),
    ):
        with pytest.raises(InvalidArgumentError):
            validation.replica_options(bad)


@pytest.mark.parametrize(
    "spec",
    [
        pb.BackendSpec(),
        pb.BackendSpec(import_path="no_colon"),
        pb.BackendSpec(import_path="a.b:"),
        pb.BackendSpec(import_path="1a:b"),
        pb.BackendSpec(import_path="a:b", init_args_json="{}"),
        pb.BackendSpec(import_path="a:b", init_args_json="[1"),
        pb.BackendSpec(import_path="a:b", init_args_json="[1]", pickled_init_args=b"x"),
    ],
)
def test_bad_specs_are_refused(spec: pb.BackendSpec) -> None:
    with pytest.raises(InvalidArgumentError):
        validation.spec(spec)


def test_import_paths_may_name_nested_attributes() -> None:
    spec = pb.BackendSpec(import_path="pkg.mod:Outer.Inner", init_args_json='["a", 1]')
    assert validation.spec(spec) is spec


def test_traffic_weights_must_sum_to_one() -> None:
    assert validation.traffic({"a": 0.2, "b": 0.8}) == {"a": 0.2, "b": 0.8}
    assert validation.traffic({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    for bad in ({"a": 0.5}, {"a": 1.5, "b": -0.5}, {"a": math.nan}, {"a": math.inf}, {}):
        with pytest.raises(InvalidArgumentError):
            validation.traffic(bad)


def _command_spec(**fields: object) -> pb.BackendSpec:
    return pb.BackendSpec(command=pb.Command(**fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"argv": []}, "must name a program"),
        ({"argv": [""]}, "must name a program"),
        ({"argv": ["x"] * 257}, "at most 256"),
        ({"argv": ["node", "a\0b"]}, "NUL"),
        ({"argv": ["node"], "cwd": "relative/dir"}, "absolute path"),
        ({"argv": ["node"], "env": {"TURNOUT_READY_FD": "3"}}, "Turnout sets itself"),
        ({"argv": ["node"], "env": {"1BAD": "x"}}, "not valid"),
        ({"argv": ["node"], "ready_timeout": 0.0}, "ready_timeout"),
        ({"argv": ["node"], "ready_timeout": math.inf}, "ready_timeout"),
    ],
)
def test_bad_commands_are_refused(fields: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidArgumentError, match=says):
        validation.spec(_command_spec(**fields))


def test_a_command_takes_no_init_args() -> None:
    spec = _command_spec(argv=["node", "replica.js"])
    spec.init_args_json = "[1]"
    with pytest.raises(InvalidArgumentError, match="no init args"):
        validation.spec(spec)


def test_a_command_with_env_cwd_and_timeout_is_accepted() -> None:
    spec = _command_spec(
        argv=["node", "replica.js"], env={"MODEL": "m"}, cwd="/srv/app", ready_timeout=5.0
    )
    assert validation.spec(spec) is spec


def test_ray_placement_options_round_trip() -> None:
    given = {
        "resources": {"accelerator_x": 1},
        "node_selector": {"zone": "a", "node_ip": "10.0.0.2"},
        "max_replicas_per_node": 2,
        "runtime_env": {"pip": ["six"], "env_vars": {"MODE": "fast"}},
    }
    message = validation.replica_options_from(given)
    assert message.resources == {"accelerator_x": 1.0}
    shown = validation.replica_options_dict(message)
    assert {key: shown[key] for key in given} == {
        **given,
        "resources": {"accelerator_x": 1.0},
        "node_selector": {"node_ip": "10.0.0.2", "zone": "a"},
    }


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        ({"resources": {"CPU": 1}}, InvalidArgumentError, "Ray's own"),
        ({"resources": {"x": 0}}, InvalidArgumentError, "> 0"),
        ({"resources": {"x": "1"}}, TypeError, "resources must map"),
        ({"resources": {"bad name": 1}}, InvalidArgumentError, "not valid"),
        ({"resources": {f"r{i}": 1 for i in range(33)}}, InvalidArgumentError, "at most 32"),
        ({"node_selector": {"zone": ""}}, InvalidArgumentError, "1 to 256"),
        ({"node_selector": {"zone": 1}}, TypeError, "node_selector must map"),
        ({"max_replicas_per_node": -1}, InvalidArgumentError, "0 \\(no limit\\)"),
        ({"max_replicas_per_node": 1.5}, TypeError, "whole number"),
        ({"runtime_env": "x"}, TypeError, "must be a dict"),
        ({"runtime_env": {"conda": "env"}}, InvalidArgumentError, "not supported"),
        ({"runtime_env": {"working_dir": "/srv"}}, InvalidArgumentError, "URI"),
        ({"runtime_env": {"pip": "six"}}, InvalidArgumentError, "list"),
        ({"runtime_env": {"env_vars": {"A=B": "x"}}}, InvalidArgumentError, "not valid"),
        ({"runtime_env": {"pip": ["x" * 70_000]}}, InvalidArgumentError, "at most 65536"),
    ],
)
def test_bad_ray_placement_options_are_refused(
    options: dict[str, object], error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        validation.replica_options_from(options)


def test_a_deeply_nested_runtime_env_is_refused() -> None:
    deep = '{"env_vars": {}, "pip": [' + "[" * 200 + "]" * 200 + "]}"
    with pytest.raises(InvalidArgumentError, match="deeper"):
        validation.replica_options(pb.ReplicaOptions(runtime_env_json=deep))
