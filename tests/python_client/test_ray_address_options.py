"""The Ray launcher's options on their way to the controller (turnout start,
turnout.init, the controller's command line), and Ray staying out of every
process that does not ask for it. The launcher itself runs in tests/ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import turnout
from turnout import _cli_start
from turnout._internal import controller_args
from turnout.errors import InvalidArgumentError

RUNTIME_ENV = '{"working_dir": "/srv/models"}'


def test_turnout_start_passes_the_ray_address_and_runtime_env_to_the_controller() -> None:
    options = _cli_start.StartOptions(
        Path("/srv/t"),
        Path("/srv/t/state.db"),
        ray_address="10.0.0.1:6379",
        ray_runtime_env=RUNTIME_ENV,
    )
    argv = _cli_start.controller_argv(options, ready_fd=5)
    parsed = controller_args.parse(argv[3:])  # after: python -m turnout.controller
    assert (parsed.ray_address, parsed.ray_runtime_env) == ("10.0.0.1:6379", RUNTIME_ENV)


@pytest.mark.parametrize(
    "argv",
    [
        ["--ray-runtime-env", RUNTIME_ENV],  # no --ray-address
        ["--ray-address", "10.0.0.1:6379", "--ray-runtime-env", "[1]"],
        ["--ray-address", "10.0.0.1:6379", "--ray-runtime-env", "{nope"],
    ],
)
def test_the_controller_refuses_a_runtime_env_it_cannot_use(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        controller_args.parse(argv)
    assert exited.value.code == 2
    assert "--ray-runtime-env" in capsys.readouterr().err


def test_init_checks_the_ray_address_before_starting_anything() -> None:
    with pytest.raises(TypeError, match="ray_address must be a str"):
        turnout.init(ray_address=6379, name="ray-type")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="host:port"):
        turnout.init(ray_address="head-node", name="ray-value")


def test_a_controller_without_a_ray_address_never_imports_ray() -> None:
    code = (
        "import sys, turnout.controller.server, turnout.controller.__main__\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
