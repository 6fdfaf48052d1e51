"""Backends that replicas import by path ("importable_backends:Greeter"), as an
operator's grpcurl call or a config file would name them."""

from __future__ import annotations

from typing import Any


class Greeter:
    def __init__(self, greeting: str = "hello") -> None:
        self.greeting = greeting

    def __call__(self, request: Any) -> str:
        return f"{self.greeting}, {request.args.get('name', 'world')}"


def shout(request: Any) -> str:
    return str(request.args.get("word", "")).upper()
