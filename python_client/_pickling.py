"""cloudpickle, keeping the file names of code it sends by value.

cloudpickle 3 writes every code object it pickles by value (a function or
class defined in ``__main__``, a notebook, a lambda, a nested function) with
the file name ``<dynamic-code>``, so that a payload does not depend on where
it was defined. A replica's traceback then says ``File "<dynamic-code>"``
instead of the user's file. Line numbers survive either way; this keeps the
file name too (a payload still depends only on the code and its file's path).
"""

from __future__ import annotations

import io
import types
from collections import ChainMap
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cloudpickle

_DYNAMIC = "<dynamic-code>"
# A private function of cloudpickle: without it, plain cloudpickle it is.
_code_reduce = getattr(_cloudpickle, "_code_reduce", None)


def _code_reduce_keeping_filename(code: types.CodeType) -> Any:
    assert _code_reduce is not None
    rebuild, args = _code_reduce(code)
    # args is the CodeType constructor's argument tuple; only the file name is
    # the placeholder (names and constants are other fields, or tuples).
    renamed = tuple(code.co_filename if arg == _DYNAMIC else arg for arg in args)
    return rebuild, renamed


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # untyped base
    dispatch_table = ChainMap(
        {types.CodeType: _code_reduce_keeping_filename}, cloudpickle.Pickler.dispatch_table
    )


def dumps(obj: Any) -> bytes:
    """``cloudpickle.dumps(obj)``, with code objects keeping their file names."""
    if _code_reduce is None:
        data: bytes = cloudpickle.dumps(obj)
        return data
    with io.BytesIO() as file:
        _Pickler(file).dump(obj)
        return file.getvalue()
