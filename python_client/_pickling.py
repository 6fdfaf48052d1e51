"""Pickling a backend's code and init args, with errors that name the culprit.

cloudpickle alone says "cannot pickle '_thread.lock' object" and nothing of
where that lock was: in a closure, a global the function uses, a class
attribute, an init arg's attribute. ``dumps`` then looks for the first part
that does not pickle (bounded in depth and count, only on failure) and names it.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import cloudpickle

# How far and how much to look for the part that fails: a failure is rare,
# but a backend's class may hold big objects, each pickled again to test it.
_MAX_DEPTH = 4
_MAX_CHECKS = 200

_SKIPPED_CLASS_KEYS = frozenset(
    {"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"}
)


def dumps(value: Any, tag: str, what: str, fix: str) -> bytes:
    """``cloudpickle.dumps(value)``; on failure a ``TypeError`` (as pickle
    raises for such objects) naming the backend, the part of ``what`` that
    cannot be pickled, cloudpickle's reason and ``fix``.

    Example::

        dumps(handler, "model", "handler", "create such objects in __init__")
        # TypeError: backend 'model': cannot pickle closure variable 'lock' of
        # handler (a _thread.lock): cannot pickle '_thread.lock' object; create ...
    """
    try:
        pickled: bytes = cloudpickle.dumps(value)
    except Exception as exc:
        budget = [_MAX_CHECKS]
        label, culprit = _culprit(value, what, _MAX_DEPTH, budget) or (what, value)
        raise TypeError(
            f"backend {tag!r}: cannot pickle {label} (a {_type_name(culprit)}): {exc}; {fix}"
        ) from exc
    return pickled


def _type_name(value: Any) -> str:
    kind = type(value)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _pickles(value: Any, budget: list[int]) -> bool:
    budget[0] -= 1
    try:
        cloudpickle.dumps(value)
    except Exception:
        return False
    return True


def _culprit(value: Any, label: str, depth: int, budget: list[int]) -> tuple[str, Any] | None:
    """The most specific part of ``value`` (which fails to pickle) that fails
    too, with its label; None when no part does (``value`` itself is it)."""
    if depth <= 0:
        return None
    for part_label, part in _parts(value, label):
        if budget[0] <= 0:
            return None
        if not _pickles(part, budget):
            return _culprit(part, part_label, depth - 1, budget) or (part_label, part)
    return None


def _names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _parts(value: Any, label: str) -> Iterator[tuple[str, Any]]:
    """What cloudpickle pickles along with ``value``, each with a label a user
    recognises."""
    if isinstance(value, types.FunctionType):
        name = value.__qualname__
        for var, cell in zip(value.__code__.co_freevars, value.__closure__ or (), strict=False):
            try:
                yield f"closure variable {var!r} of {name}", cell.cell_contents
            except ValueError:  # an empty cell
                continue
        for var in dict.fromkeys(_names(value.__code__)):
            if var in value.__globals__:
                yield f"global {var!r} used by {name}", value.__globals__[var]
        for i, default in enumerate(value.__defaults__ or ()):
            yield f"default argument {i} of {name}", default
        for key, default in (value.__kwdefaults__ or {}).items():
            yield f"default of {key!r} of {name}", default
    elif isinstance(value, type):
        for key, attr in vars(value).items():
            if key in _SKIPPED_CLASS_KEYS:
                continue
            if isinstance(attr, staticmethod | classmethod):
                attr = attr.__func__
            yield f"{value.__qualname__}.{key}", attr
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield f"{label}[{i}]", item
    elif isinstance(value, dict):
        for key, item in value.items():
            yield f"{label}[{key!r}]", item
    elif isinstance(value, types.MethodType):
        yield f"{label}.__self__", value.__self__
    elif not isinstance(value, types.ModuleType) and isinstance(
        getattr(value, "__dict__", None), dict
    ):
        for key, attr in vars(value).items():
            yield f"{label}.{key}", attr
