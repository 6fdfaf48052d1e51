"""The package graph: .importlinter names every client module, and a server
process does not load the client (issue 15)."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"_internal", "_sending"}


def client_modules() -> set[str]:
    """The modules directly under python_client/ that are not a layer of their own."""
    names = set()
    for entry in (ROOT / "python_client").iterdir():
        if entry.name in LAYERS or entry.name.startswith("__"):
            continue
        if entry.suffix == ".py" or (entry / "__init__.py").exists():
            names.add(f"turnout.{entry.stem}")
    return names


def test_the_import_contract_forbids_every_client_module_to_the_servers() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    forbidden = set(config["importlinter:contract:client"]["forbidden_modules"].split())
    missing = client_modules() - forbidden
    assert not missing, f"add to .importlinter's client contract: {sorted(missing)}"


@pytest.mark.parametrize(
    "server", ["turnout.controller.server", "turnout.proxy.server", "turnout.replica.server"]
)
def test_a_server_process_does_not_load_the_client(server: str) -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {server}; print(*sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    client = sorted(set(loaded) & (client_modules()))
    assert client == [], f"{server} loads client modules {client}"


def test_every_package_in_the_tree_is_in_the_built_wheel() -> None:
    # A package missing from pyproject works in an editable install and is
    # absent from a real one (turnout._conformance was, and `turnout
    # replica-check` failed with ModuleNotFoundError after `pip install .`).
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    folders = project["tool"]["setuptools"]["package-dir"]
    in_tree = set()
    for package, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            in_tree.add(".".join([package, *relative]))
    assert in_tree - listed == set()
