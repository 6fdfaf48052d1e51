"""Ray runtime_envs, the instance's (--ray-runtime-env, init(ray_runtime_env=))
and a backend's (replica_options): which keys and types pass, and why the
others are refused (no sockets, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from turnout._internal import validation
from turnout.errors import InvalidArgumentError


def test_the_four_keys_pass(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text("")
    instance = {
        "working_dir": str(tmp_path),
        "pip": ["numpy==2.1"],
        "env_vars": {"MODEL_DIR": "/data"},
        "py_modules": [str(tmp_path / "mod.py"), "s3://bucket/lib.zip"],
    }
    assert validation.runtime_env(json.dumps(instance), instance=True) == instance
    backend = {**instance, "working_dir": "https://x/code.zip", "py_modules": ["gs://b/m.zip"]}
    assert validation.runtime_env(json.dumps(backend)) == backend


@pytest.mark.parametrize(
    ("runtime_env", "message"),
    [
        ({"conda": {"dependencies": ["x"]}}, "keys ['conda'] are not supported"),
        ({"container": {}}, "known: working_dir, pip, env_vars, py_modules"),
        ({"pip": "numpy"}, "pip must be a list of requirement strs"),
        ({"py_modules": "s3://b/m.zip"}, "py_modules must be a list of strs"),
        ({"env_vars": {"A": 1}}, "env_vars must map names to str values"),
        ({"env_vars": {"1A": "x"}}, "environment variable name '1A' is not valid"),
        ({"working_dir": 3}, "working_dir must be a folder or a URI"),
        ({"working_dir": "/no/such/folder"}, "is not a folder here"),
        ({"py_modules": ["/no/such/module"]}, "does not exist here"),
        ({"py_modules": ["s3://b/m.zip"] * 65}, "at most 64 entries"),
    ],
)
def test_an_instance_runtime_env_is_refused_with_the_reason(
    runtime_env: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match="--ray-runtime-env") as refused:
        validation.runtime_env(json.dumps(runtime_env), instance=True)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("runtime_env", "message"),
    [
        ({"working_dir": "/srv/code"}, "working_dir must be a URI"),
        ({"py_modules": ["/srv/lib"]}, "py_modules must be URIs"),
        ({"uv": ["numpy"]}, "keys ['uv'] are not supported"),
    ],
)
def test_a_backends_runtime_env_names_code_by_uri(
    runtime_env: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match="runtime_env") as refused:
        validation.runtime_env(json.dumps(runtime_env))
    assert message in str(refused.value)
