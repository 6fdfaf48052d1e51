"""Deploy files and plans, without processes: what `turnout deploy` would do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from turnout.config import DEFAULTS
from turnout.deploy import (
    BackendEntry,
    DeployFile,
    DeployFileError,
    EndpointEntry,
    State,
    load_file,
    parse,
    plan,
)
from turnout.v1 import controller_pb2 as pb

FULL_YAML = """\
backends:
  greeter:
    import_path: myapp.models:Greeter
    init_args: ["hello", {"punctuation": "!"}]
    config:
      num_replicas: 2
      max_concurrent_queries: 8
    replica_options:
      num_cpus: 1
      env: {MODEL_DIR: /srv/models}
      memory: 1073741824
  shouter:
    import_path: myapp.models:shout
endpoints:
  greet:
    route: /greet
    methods: [get, POST]
    traffic: {greeter: 0.75, shouter: 0.25}
    shadows: {shouter: 0.1}
    request_timeout: 5
  shout:
    backend: shouter
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _problems(document: Any) -> list[str]:
    with pytest.raises(DeployFileError) as caught:
        parse(document, "f.yaml")
    return caught.value.problems


def _running(wanted: DeployFile) -> State:
    """The state an instance reports after deploying ``wanted``: every config
    field filled in, methods upper-cased, as the controller answers."""
    return State(
        backends={
            name: BackendEntry(
                name=name,
                import_path=b.import_path,
                init_args=b.init_args,
                config={**DEFAULTS.to_dict(), **b.config},
                replica_options=b.replica_options,
                interface=b.interface,
            )
            for name, b in wanted.backends.items()
        },
        endpoints=dict(wanted.endpoints),
    )


# ---- reading files ------------------------------------------------------------


def test_full_yaml_file_is_read_into_backends_and_endpoints(tmp_path: Path) -> None:
    wanted = load_file(_write(tmp_path, "turnout.yaml", FULL_YAML))
    assert list(wanted.backends) == ["greeter", "shouter"]
    assert wanted.backends["greeter"] == BackendEntry(
        name="greeter",
        import_path="myapp.models:Greeter",
        init_args=("hello", {"punctuation": "!"}),
        config={"num_replicas": 2, "max_concurrent_queries": 8},
        replica_options=pb.ReplicaOptions(
            num_cpus=1.0, env={"MODEL_DIR": "/srv/models"}, memory_bytes=1 << 30
        ),
    )
    assert wanted.endpoints["greet"] == EndpointEntry(
        name="greet",
        route="/greet",
        methods=("GET", "POST"),
        traffic={"greeter": 0.75, "shouter": 0.25},
        shadows={"shouter": 0.1},
        request_timeout=5.0,
    )
    # `backend: x` is short for all traffic to x; no route = handles only.
    assert wanted.endpoints["shout"] == EndpointEntry(name="shout", traffic={"shouter": 1.0})


def test_json_file_reads_the_same_as_yaml(tmp_path: Path) -> None:

    document = yaml.safe_load(FULL_YAML)
    from_json = load_file(_write(tmp_path, "turnout.json", json.dumps(document)))
    assert from_json == load_file(_write(tmp_path, "turnout.yml", FULL_YAML))


def test_every_problem_names_its_item_and_field() -> None:
    problems = _problems(
        {
            "backends": {
                "a": {"import_path": "not a path", "config": {"num_replicas": 0, "colour": 1}},
                "b": {"init_args": "x", "replica_options": {"num_gpus": "two", "memory": -1}},
            },
            "endpoints": {
                "e": {"route": "e", "methods": ["FETCH"], "traffic": {"a": 0.5}},
                "f": {"backend": "a", "traffic": {"a": 1}, "shadows": {"a": 2}},
                "g": {"route": "/g"},
            },
            "extra": {},
        }
    )
    expected_prefixes = [
        "extra: unknown field",
        "backends.a.import_path: ",
        "backends.a.config.num_replicas: ",
        "backends.a.config.colour: unknown config key",
        "backends.b.import_path: required",
        "backends.b.init_args: must be a list",
        "backends.b.replica_options.num_gpus: must be a number",
        "backends.b.replica_options.memory: must be a whole number of bytes",
        "endpoints.e.route: route 'e' must start with '/'",
        "endpoints.e.methods: unknown HTTP method 'FETCH'",
        "endpoints.e.traffic: traffic weights must sum to 1",
        "endpoints.f: give either backend or traffic",
        "endpoints.f.shadows.a: must be > 0 and <= 1",
        "endpoints.g: needs backend",
    ]
    for prefix in expected_prefixes:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert len(problems) == len(expected_prefixes), problems


def test_unreadable_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    cases = {
        "broken.yaml": ("backends: [\n", "not valid YAML: line 2"),
        "broken.json": ('{"backends": ', "not valid JSON"),
        "list.yaml": ("- a\n- b\n", "the top level must be a mapping"),
        "deploy.toml": ("", "name the file .yaml, .yml or .json"),
    }
    for name, (text, message) in cases.items():
        with pytest.raises(DeployFileError) as caught:
            load_file(_write(tmp_path, name, text))
        assert message in caught.value.problems[0], caught.value.problems
    with pytest.raises(DeployFileError, match="cannot read it"):
        load_file(tmp_path / "missing.yaml")


def test_an_empty_file_deploys_nothing() -> None:
    assert parse(None) == DeployFile()


# ---- planning -------------------------------------------------------------------


def test_everything_is_created_on_an_empty_instance() -> None:
    wanted = parse(yaml.safe_load(FULL_YAML))
    steps = plan(wanted, State())
    assert [(c.name, c.action) for c in steps.changes] == [
        ("greeter", "create"),
        ("shouter", "create"),
        ("greet", "create"),
        ("shout", "create"),
    ]
    assert steps.changed


def test_applying_the_same_file_again_changes_nothing() -> None:
    wanted = parse(yaml.safe_load(FULL_YAML))
    steps = plan(wanted, _running(wanted), prune=True)
    assert {c.action for c in steps.changes} == {"unchanged"}
    assert not steps.changed
    assert steps.counts()["unchanged"] == 4


def test_new_code_and_config_are_updates_with_details() -> None:
    before = parse({"backends": {"m": {"import_path": "app:V1", "init_args": [1]}}})
    after = parse(
        {
            "backends": {
                "m": {"import_path": "app:V2", "init_args": [2], "config": {"num_replicas": 3}}
            }
        }
    )
    (change,) = plan(after, _running(before)).backends
    assert change.action == "update"
    assert change.new_code
    assert change.config_update == {"num_replicas": 3}
    assert change.details == (
        "code: app:V1 -> app:V2",
        "init_args: [1] -> [2]",
        "num_replicas: 1 -> 3",
    )


def test_a_config_field_left_out_of_the_file_goes_back_to_its_default() -> None:
    before = parse({"backends": {"m": {"import_path": "a:b", "config": {"num_replicas": 4}}}})
    after = parse({"backends": {"m": {"import_path": "a:b"}}})
    (change,) = plan(after, _running(before)).backends
    assert not change.new_code
    assert change.config_update == {"num_replicas": 1}


def test_a_backend_sent_pickled_from_python_counts_as_changed() -> None:
    wanted = parse({"backends": {"m": {"import_path": "a:b"}}})
    running = State(backends={"m": BackendEntry("m", None, None, DEFAULTS.to_dict())})
    (change,) = plan(wanted, running).backends
    assert change.action == "update" and change.new_code
    assert change.details == ("code: (pickled) -> a:b", "init_args: (pickled) -> []")


def test_replica_options_cannot_change_in_place() -> None:
    before = parse({"backends": {"m": {"import_path": "a:b"}}})
    after = parse({"backends": {"m": {"import_path": "a:b", "replica_options": {"num_cpus": 2}}}})
    with pytest.raises(DeployFileError) as caught:
        plan(after, _running(before))
    assert caught.value.problems[0].startswith("backends.m.replica_options: cannot change")


def test_endpoint_traffic_and_shadows_update_in_place() -> None:
    backends = {"a": {"import_path": "m:a"}, "b": {"import_path": "m:b"}}
    before = parse(
        {"backends": backends, "endpoints": {"e": {"backend": "a", "shadows": {"b": 0.5}}}}
    )
    after = parse({"backends": backends, "endpoints": {"e": {"traffic": {"a": 0.5, "b": 0.5}}}})
    change = plan(after, _running(before)).endpoints[0]
    assert change.action == "update"
    assert change.new_traffic
    assert change.shadow_updates == {"b": 0.0}  # 0 removes the shadow


def test_a_new_route_or_methods_update_the_endpoint_in_place() -> None:
    backends = {"a": {"import_path": "m:a"}}
    before = parse({"backends": backends, "endpoints": {"e": {"route": "/x", "backend": "a"}}})
    after = parse(
        {
            "backends": backends,
            "endpoints": {"e": {"route": "/y", "methods": ["POST"], "backend": "a"}},
        }
    )
    change = plan(after, _running(before)).endpoints[0]
    assert change.action == "update"
    assert change.new_shape and not change.new_traffic
    assert change.details == ("route: /x -> /y", "methods: GET -> POST")


def test_items_missing_from_the_file_are_removed_only_with_prune() -> None:
    running = _running(
        parse(
            {
                "backends": {"a": {"import_path": "m:a"}, "old": {"import_path": "m:o"}},
                "endpoints": {"e": {"backend": "a"}, "gone": {"backend": "old"}},
            }
        )
    )
    wanted = parse(
        {"backends": {"a": {"import_path": "m:a"}}, "endpoints": {"e": {"backend": "a"}}}
    )
    kept = plan(wanted, running)
    assert [(c.name, c.action) for c in kept.changes if c.name in ("old", "gone")] == [
        ("old", "kept"),
        ("gone", "kept"),
    ]
    assert not kept.changed
    pruned = plan(wanted, running, prune=True)
    assert [(c.name, c.action) for c in pruned.changes if c.name in ("old", "gone")] == [
        ("old", "delete"),
        ("gone", "delete"),
    ]
    assert pruned.counts()["delete"] == 2


def test_traffic_may_go_to_a_backend_the_instance_has_unless_pruning() -> None:
    running = _running(parse({"backends": {"py": {"import_path": "m:py"}}}))
    wanted = parse({"endpoints": {"e": {"backend": "py"}}})
    assert plan(wanted, running).endpoints[0].action == "create"
    with pytest.raises(DeployFileError) as caught:
        plan(wanted, running, prune=True)
    assert caught.value.problems == ["endpoints.e.traffic.py: no backend of that name in the file"]
    with pytest.raises(DeployFileError, match="endpoints.e.traffic.ghost"):
        plan(parse({"endpoints": {"e": {"backend": "ghost"}}}), running)


def test_an_endpoints_cors_policy_is_read_compared_and_updated_in_place() -> None:
    backends = {"a": {"import_path": "m:a"}}
    cors = {"allow_origins": ["https://app.example"], "max_age": 60}
    plain = {"route": "/x", "backend": "a"}
    before = parse({"backends": backends, "endpoints": {"e": plain}})
    after = parse({"backends": backends, "endpoints": {"e": {**plain, "cors": cors}}})
    policy = after.endpoints["e"].cors
    assert policy is not None and policy.allow_origins == ("https://app.example",)
    change = plan(after, _running(before)).endpoints[0]
    assert change.action == "update" and change.new_shape
    assert change.details[0].startswith('cors: null -> {"allow_origins": ["https://app.example"]')
    assert plan(after, _running(after)).endpoints[0].action == "unchanged"
    removed = plan(before, _running(after)).endpoints[0]
    assert removed.new_shape and removed.details[0].endswith("-> null")


def test_a_bad_cors_policy_names_the_endpoint_and_what_is_wrong() -> None:
    problems = _problems(
        {
            "backends": {"a": {"import_path": "m:a"}},
            "endpoints": {"e": {"backend": "a", "cors": {"allow_origins": ["nope"]}}},
        }
    )
    assert len(problems) == 1 and problems[0].startswith("endpoints.e.cors: cors allow_origins")


def _as_running(wanted: DeployFile) -> State:
    """What an instance reports after deploying ``wanted``, read back through
    the proto as the client reads it (an autoscaled num_replicas is None)."""
    from turnout._internal import validation
    from turnout.config import BackendConfig

    state = _running(wanted)
    for name, entry in state.backends.items():
        sent = BackendConfig.coerce(dict(wanted.backends[name].config)).to_proto()
        shown = BackendConfig.from_proto(validation.full_config(sent)).to_dict()
        state.backends[name] = BackendEntry(
            entry.name, entry.import_path, entry.init_args, shown, entry.replica_options
        )
    return state


def test_an_autoscaled_backend_is_unchanged_by_the_same_file_and_updated_by_new_bounds() -> None:
    rules = {"max_replicas": 4, "target_num_ongoing_requests_per_replica": 1}
    before = parse(
        {"backends": {"m": {"import_path": "a:b", "config": {"autoscaling_config": rules}}}}
    )
    (same,) = plan(before, _as_running(before)).backends
    assert same.action == "unchanged"
    after = parse(
        {"backends": {"m": {"import_path": "a:b", "config": {"autoscaling": {"max_replicas": 6}}}}}
    )
    (change,) = plan(after, _as_running(before)).backends
    assert change.config_update == {"autoscaling": {"max_replicas": 6}}
    assert _problems({"backends": {"m": {"import_path": "a:b", "config": {
        "num_replicas": 2, "autoscaling_config": {"max_replicas": 2}}}}})  # fmt: skip


# ---- rollout blocks ---------------------------------------------------------------

_TWO = {"a": {"import_path": "m:a"}, "b": {"import_path": "m:b"}}


def test_a_rollout_block_makes_a_backend_change_a_rollout() -> None:
    import dataclasses

    before = parse({"backends": _TWO, "endpoints": {"e": {"backend": "a"}}})
    block = {"steps": [0.1, 1], "step_s": 30, "slo": {"max_error_rate": 0.01}}
    after = parse({"backends": _TWO, "endpoints": {"e": {"backend": "b", "rollout": block}}})
    assert after.endpoints["e"].rollout == block
    change = plan(after, _running(before)).endpoints[0]
    assert change.action == "update" and change.rollout and change.new_traffic
    assert change.details == ("rollout: a 1 -> b 1",)
    # Deployed again while that rollout runs (traffic split on its way): nothing to do.
    serving = _running(before)
    moving = dataclasses.replace(
        serving.endpoints["e"], traffic={"a": 0.9, "b": 0.1}, rolling_to="b"
    )
    running = State(backends=serving.backends, endpoints={"e": moving})
    assert plan(after, running).endpoints[0].action == "unchanged"
    # Without the block the same change is one SetTraffic.
    plain = parse({"backends": _TWO, "endpoints": {"e": {"backend": "b"}}})
    change = plan(plain, _running(before)).endpoints[0]
    assert change.new_traffic and not change.rollout


def test_bad_rollout_blocks_are_refused_with_their_field() -> None:
    problems = _problems(
        {
            "backends": _TWO,
            "endpoints": {
                "e": {"backend": "b", "rollout": {"steps": [0.5, 0.1], "step_s": -1, "x": 1}},
                "f": {"traffic": {"a": 0.5, "b": 0.5}, "rollout": {"slo": {"max_eror": 1}}},
                "g": {"backend": "b", "rollout": [1]},
            },
        }
    )
    text = "\n".join(problems)
    assert "endpoints.e.rollout.x: unknown field" in text
    assert "endpoints.e.rollout.steps: steps must be increasing" in text
    assert "endpoints.e.rollout.step_s" in text
    assert "endpoints.f.rollout: needs `backend:`" in text
    assert "endpoints.f.rollout.slo: unknown slo key" in text
    assert "endpoints.g.rollout: must be a mapping" in text


def test_a_backends_interface_is_read_compared_and_checked() -> None:
    app = {"import_path": "web:app"}
    before = parse({"backends": {"a": app}})
    after = parse({"backends": {"a": {**app, "interface": "wsgi"}}})
    assert (before.backends["a"].interface, after.backends["a"].interface) == ("auto", "wsgi")
    change = plan(after, _running(before)).backends[0]
    assert change.new_code and change.details == ("interface: auto -> wsgi",)
    problems = _problems({"backends": {"a": {**app, "interface": "cgi"}}})
    assert problems == [
        "backends.a.interface: interface must be one of 'auto', 'handler', 'wsgi', 'asgi', "
        "not 'cgi'"
    ]
    problems = _problems({"backends": {"a": {"command": ["node", "r.js"], "interface": "wsgi"}}})
    assert problems == ["backends.a.interface: a command serves the replica protocol itself"]
