"""Which token a client presents when it is given none."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout._internal import auth


@pytest.fixture
def default_instance_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A `turnout start` instance's admin token file in a fresh data directory."""
    for name in (auth.TOKEN_ENV, auth.TOKEN_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    folder = tmp_path / "turnout"
    folder.mkdir(mode=0o700)
    return auth.ensure(folder / auth.TOKEN_FILE)


@pytest.mark.parametrize(
    "address", ["127.0.0.1:50051", "localhost:50051", "[::1]:50051", "unix:/run/t.sock"]
)
def test_the_default_instance_token_goes_to_addresses_on_this_machine(
    default_instance_token: str, address: str
) -> None:
    assert auth.find_token(address=address) == default_instance_token


@pytest.mark.parametrize("address", ["10.200.0.5:50051", "models.example:50051"])
def test_the_default_instance_token_never_goes_to_another_host_unasked(
    default_instance_token: str, address: str
) -> None:
    assert auth.find_token(address=address) is None
    # Asked for: a token given (or named in the environment) is sent anywhere.
    assert auth.find_token("given", address=address) == "given"
