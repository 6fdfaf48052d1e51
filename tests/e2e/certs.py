"""Test certificates, made with the ``openssl`` command line (no Python dependency).

``make_pki(folder)`` writes a CA, a certificate it signs for ``localhost`` and
``127.0.0.1`` (server and client at once: one instance uses it on every hop),
a certificate with the wrong name, and a second CA with a certificate of its
own (the "wrong CA"). Keys are EC P-256: quick to make.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    good: Pair  # signed by ca, names localhost and 127.0.0.1
    wrong_name: Pair  # signed by ca, names only other.invalid
    other_ca: Path
    stranger: Pair  # signed by other_ca, names localhost and 127.0.0.1


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", cert, "-days", DAYS, "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _signed(folder: Path, name: str, ca: tuple[Path, Path], san: str) -> Pair:
    cert, key, csr = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    ext = folder / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", DAYS, "-extfile", ext,
    )  # fmt: skip
    key.chmod(0o600)
    return Pair(cert, key)


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    other = _ca(folder, "other-ca")
    local = "DNS:localhost,IP:127.0.0.1"
    return Pki(
        ca=ca[0],
        good=_signed(folder, "instance", ca, local),
        wrong_name=_signed(folder, "wrong-name", ca, "DNS:other.invalid"),
        other_ca=other[0],
        stranger=_signed(folder, "stranger", other, local),
    )
