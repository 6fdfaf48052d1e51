"""Where plaintext may listen, and the TLS flags' checks (no processes)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

import turnout
from turnout._internal import tls_options
from turnout._internal.rpc import Security


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "unix:/run/t/c.sock"]
)
def test_local_hosts_may_listen_in_plaintext(host: str) -> None:
    assert tls_options.is_local(host)
    tls_options.refuse_exposed(host, Security(), "the controller")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "[::]", "serve.example"])
def test_exposed_hosts_need_tls(host: str, tmp_path: Path) -> None:
    assert not tls_options.is_local(host)
    with pytest.raises(turnout.InvalidArgumentError, match="--tls-cert PEM --tls-key PEM"):
        tls_options.refuse_exposed(host, Security(), "the controller")
    tls = turnout.TLSConfig(cert=tmp_path / "c.pem", key=tmp_path / "c.key")
    tls_options.refuse_exposed(host, Security(tls=tls), "the controller")


def test_insecure_opt_out_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        tls_options.refuse_exposed("0.0.0.0", Security(insecure=True), "the controller")
    assert "WITHOUT TLS (--insecure)" in caplog.text


def test_tls_flags_are_checked(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(turnout.InvalidArgumentError, match="both a certificate and its key"):
        tls_options.from_args(argparse.Namespace(tls_cert=cert, tls_key=None, tls_ca=None))
    with pytest.raises(turnout.InvalidArgumentError, match="cannot read the TLS key"):
        tls_options.from_args(
            argparse.Namespace(tls_cert=cert, tls_key=tmp_path / "none", tls_ca=None)
        )
    env = {"TURNOUT_TLS_CA": str(cert)}
    tls = tls_options.from_args(argparse.Namespace(), env)
    assert tls == turnout.TLSConfig(ca=cert)
    assert tls_options.argv(Security(tls=tls)) == ["--tls-ca", str(cert)]


def test_socket_directory_must_be_private(tmp_path: Path) -> None:
    tls_options.prepare_unix_socket(f"unix:{tmp_path}/new/c.sock")
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(turnout.InvalidArgumentError, match="chmod 700"):
        tls_options.prepare_unix_socket(f"unix:{shared}/c.sock")
