"""``turnout.init()`` refuses bad arguments before it starts anything."""

from __future__ import annotations

import pytest

import turnout


@pytest.mark.parametrize("value", [True, "2", 1.5])
def test_proxy_workers_of_wrong_type(value: object) -> None:
    with pytest.raises(TypeError, match=r"^proxy_workers must be an int, got "):
        turnout.init(http_port=0, proxy_workers=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1])
def test_proxy_workers_below_one(value: int) -> None:
    with pytest.raises(turnout.InvalidArgumentError) as info:
        turnout.init(http_port=0, proxy_workers=value)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == f"proxy_workers must be >= 1, got {value}"


def test_access_log_format_must_be_known_and_the_log_on() -> None:
    with pytest.raises(TypeError, match=r"^access_log_format must be a str, got int"):
        turnout.init(http_port=0, access_log=True, access_log_format=1)  # type: ignore[arg-type]
    with pytest.raises(turnout.InvalidArgumentError, match="must be one of text, json, got 'xml'"):
        turnout.init(http_port=0, access_log=True, access_log_format="xml")
    with pytest.raises(turnout.InvalidArgumentError, match="needs access_log=True"):
        turnout.init(http_port=0, access_log_format="json")
