"""The package graph: .importlinter names every client module, and a server
process does not load the client (issue 15)."""

from __future__ import annotations

import configparser
from pathlib import Path

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
