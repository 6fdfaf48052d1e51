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
from turnout._internal import controller_args, proxy_args
from turnout.errors import InvalidArgumentError

RUNTIME_ENV = '{"working_dir": "https://example.com/models.zip", "pip": ["numpy"]}'


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
        ["--ray-address", "10.0.0.1:6379", "--ray-runtime-env", '{"conda": {}}'],
        ["--ray-address", "10.0.0.1:6379", "--ray-runtime-env", '{"working_dir": "/nope/x"}'],
    ],
)
def test_the_controller_refuses_a_runtime_env_it_cannot_use(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        controller_args.parse(argv)
    assert exited.value.code == 2
    assert "--ray-runtime-env" in capsys.readouterr().err


def test_turnout_start_passes_the_proxy_options_to_the_controller() -> None:
    options = _cli_start.StartOptions(
        Path("/srv/t"),
        Path("/srv/t/state.db"),
        ray_address="10.0.0.1:6379",
        ray_prefer_local_replicas=True,
        ray_proxy_location="EveryNode",
    )
    parsed = controller_args.parse(_cli_start.controller_argv(options, ready_fd=5)[3:])
    assert (parsed.ray_prefer_local_replicas, parsed.ray_proxy_location) == (True, "EveryNode")
    default = controller_args.parse(["--ray-address", "10.0.0.1:6379"])
    assert (default.ray_prefer_local_replicas, default.ray_proxy_location) == (
        False,
        "WithReplicas",
    )


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--ray-prefer-local-replicas"], "--ray-prefer-local-replicas needs --ray-address"),
        (["--ray-proxy-location", "EveryNode"], "--ray-proxy-location needs --ray-address"),
        (["--ray-address", "h:1", "--ray-proxy-location", "HeadOnly"], "invalid choice"),
    ],
)
def test_the_controller_refuses_proxy_options_it_cannot_use(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        controller_args.parse(argv)
    assert exited.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ray-prefer-local-replicas"], "--ray-prefer-local-replicas needs --ray-address"),
        (["--ray-proxy-location", "EveryNode"], "--ray-proxy-location needs --ray-address"),
        (["--ray-runtime-env", "{}"], "--ray-runtime-env needs --ray-address"),
        (
            ["--ray-address", "h:1", "--ray-runtime-env", '{"conda": {}}'],
            "--ray-runtime-env keys ['conda'] are not supported",
        ),
        (["--ray-address", "h:1", "--ray-proxy-location", "Nowhere"], "invalid choice"),
    ],
)
def test_turnout_start_refuses_ray_options_without_a_ray_address(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from turnout import cli

    try:
        code = cli.main(["start", "--instance-dir", str(tmp_path / "t"), *argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    assert not (tmp_path / "t").exists()
    assert message in capsys.readouterr().err


def test_a_proxy_preferring_local_replicas_needs_its_node_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        proxy_args.parse(["--controller", "h:1", "--prefer-local-replicas"])
    assert "--prefer-local-replicas needs --node-id" in capsys.readouterr().err


def test_init_checks_the_ray_proxy_options_before_starting_anything() -> None:
    with pytest.raises(TypeError, match="ray_prefer_local_replicas must be a bool"):
        turnout.init(ray_prefer_local_replicas="yes", name="ray-prefer")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="ray_proxy_location must be one of"):
        turnout.init(ray_address="h:1", ray_proxy_location="HeadOnly", name="ray-location")
    with pytest.raises(InvalidArgumentError, match="ray_prefer_local_replicas needs ray_address"):
        turnout.init(ray_prefer_local_replicas=True, name="ray-local")


def test_init_checks_the_ray_runtime_env_before_starting_anything() -> None:
    with pytest.raises(TypeError, match="ray_runtime_env must be a dict"):
        turnout.init(ray_address="h:1", ray_runtime_env="{}", name="env-type")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="ray_runtime_env needs ray_address"):
        turnout.init(ray_runtime_env={"pip": ["x"]}, name="env-alone")
    with pytest.raises(InvalidArgumentError, match="keys \\['conda'\\] are not supported"):
        turnout.init(ray_address="h:1", ray_runtime_env={"conda": {}}, name="env-key")
    with pytest.raises(InvalidArgumentError, match="is not a folder here"):
        turnout.init(ray_address="h:1", ray_runtime_env={"working_dir": "/no/x"}, name="env-dir")


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
