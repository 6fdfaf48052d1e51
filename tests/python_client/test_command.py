"""``turnout.Command`` and command backends in deploy files, without processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import turnout
from turnout.client import _spec
from turnout.deploy import BackendEntry, DeployFileError, State, parse, plan
from turnout.errors import InvalidArgumentError


def test_a_command_becomes_the_spec_s_source_with_an_absolute_cwd() -> None:
    command = turnout.Command(["node", "replica.js"], env={"A": "1"}, cwd="app", ready_timeout=5)
    spec = _spec("b", command, ())
    assert spec.WhichOneof("source") == "command"
    assert list(spec.command.argv) == ["node", "replica.js"]
    assert dict(spec.command.env) == {"A": "1"}
    assert spec.command.cwd == os.path.abspath("app")
    assert spec.command.ready_timeout == 5.0
    assert turnout.Command.from_proto(spec.command) == command


def test_a_command_takes_no_init_args() -> None:
    with pytest.raises(InvalidArgumentError, match="no init args"):
        _spec("b", turnout.Command(["node"]), (1,))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"argv": "node replica.js"},
        {"argv": ["node", 1]},
        {"argv": ["node"], "env": {"A": 1}},
        {"argv": ["node"], "cwd": 3},
        {"argv": ["node"], "ready_timeout": "5"},
    ],
)
def test_wrong_types_are_type_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        turnout.Command(**kwargs)  # type: ignore[arg-type]


def test_deploy_file_commands_as_a_list_or_a_mapping(tmp_path: Path) -> None:
    wanted = parse(
        {
            "backends": {
                "short": {"command": ["node", "replica.js"]},
                "long": {
                    "command": {
                        "argv": ["node", "replica.js"],
                        "cwd": "app",
                        "env": {"A": "1"},
                        "ready_timeout": 5,
                    }
                },
            }
        },
        base_dir=tmp_path,
    )
    short, long = wanted.backends["short"], wanted.backends["long"]
    assert short.import_path is None
    assert short.command == turnout.Command(["node", "replica.js"], cwd=tmp_path)
    assert long.command == turnout.Command(
        ["node", "replica.js"], cwd=tmp_path / "app", env={"A": "1"}, ready_timeout=5
    )


def test_deploy_file_command_problems_name_their_field() -> None:
    with pytest.raises(DeployFileError) as failed:
        parse(
            {
                "backends": {
                    "both": {"import_path": "m:f", "command": ["node"]},
                    "args": {"command": ["node"], "init_args": [1]},
                    "empty": {"command": []},
                    "odd": {"command": {"argv": ["node"], "shell": True}},
                }
            }
        )
    problems = "\n".join(failed.value.problems)
    assert "backends.both: give either import_path or command, not both" in problems
    assert "backends.args.init_args: a command takes none" in problems
    assert "backends.empty.command: command argv must name a program" in problems
    assert "backends.odd.command.shell: unknown field" in problems


def test_a_changed_command_is_new_code_and_the_same_one_is_unchanged(tmp_path: Path) -> None:
    wanted = parse({"backends": {"b": {"command": ["node", "v2.js"]}}}, base_dir=tmp_path)
    running = BackendEntry(
        name="b",
        import_path=None,
        command=turnout.Command(["node", "v1.js"], cwd=tmp_path),
        config=dict(wanted.backends["b"].config),
    )
    change = plan(wanted, State(backends={"b": running})).backends[0]
    assert change.new_code
    assert any("command" in detail for detail in change.details)
    same = BackendEntry(name="b", import_path=None, command=wanted.backends["b"].command)
    assert not plan(wanted, State(backends={"b": same})).backends[0].new_code
