"""BackendConfig.http_call_methods: checked, carried with its own presence, shown."""

from __future__ import annotations

import pytest

import turnout
from turnout._cli_render import _config_text


def test_method_names_are_checked_in_the_config() -> None:
    assert turnout.BackendConfig(http_call_methods=["a", "b", "a"]).http_call_methods == [
        "a",
        "b",
    ]
    for bad in (["reconfigure"], ["check_health"], ["__init__"], ["_private"], ["a b"]):
        with pytest.raises(turnout.InvalidArgumentError):
            turnout.BackendConfig(http_call_methods=bad)
    for wrong in ("predict", [1], None.__class__):
        with pytest.raises(TypeError):
            turnout.BackendConfig(http_call_methods=wrong)  # type: ignore[arg-type]
    empty = turnout.BackendConfig(http_call_methods=[]).to_proto()
    assert empty.HasField("http_call_methods") and not empty.http_call_methods.names
    assert turnout.BackendConfig.from_proto(empty).http_call_methods == []


def test_status_shows_the_methods_as_json() -> None:
    config = turnout.BackendConfig(http_call_methods=["predict"], max_batch_size=4).to_dict()
    assert _config_text(config) == 'http_call_methods=["predict"] max_batch_size=4'
