"""Telling WSGI apps, ASGI apps and handlers apart (turnout._internal.web_apps)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette

from turnout._internal import web_apps
from turnout.v1 import controller_pb2 as pb


def wsgi(environ: Any, start_response: Any) -> list[bytes]:
    return []


async def asgi(scope: Any, receive: Any, send: Any) -> None:
    pass


def handler(request: Any) -> str:
    return ""


async def async_handler(request: Any) -> str:
    return ""


def no_request() -> str:
    return ""


class Model:
    def __call__(self, request: Any) -> str:
        return ""


class AsgiObject:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        pass


class WsgiObject:
    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return []


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (Flask(__name__), "wsgi"),
        (FastAPI(), "asgi"),
        (Starlette(), "asgi"),
        (wsgi, "wsgi"),
        (asgi, "asgi"),
        (WsgiObject(), "wsgi"),
        (AsgiObject(), "asgi"),
        (handler, "handler"),
        (async_handler, "handler"),
        (no_request, "handler"),
        (Model(), "handler"),
        # A class is constructed in the replica; it is never an app itself.
        (Model, "handler"),
        (Flask, "handler"),
        (lambda *args: None, "handler"),
        ("module:attr", "handler"),
    ],
)
def test_detection_follows_the_documented_rules(obj: Any, expected: str) -> None:
    assert web_apps.detect(obj) == expected


def test_a_sync_callable_with_three_parameters_is_no_asgi_app() -> None:
    def three(scope: Any, receive: Any, send: Any) -> None:
        pass

    assert web_apps.detect(three) == "handler"


def test_interfaces_round_trip_through_the_proto() -> None:
    for name in web_apps.INTERFACES:
        assert web_apps.from_proto(web_apps.to_proto(name)) == name
    assert web_apps.from_proto(web_apps.to_proto("auto")) is None
    assert web_apps.to_proto("wsgi") == pb.BACKEND_INTERFACE_WSGI


def test_bad_interfaces_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="one of 'auto', 'handler', 'wsgi', 'asgi'"):
        web_apps.to_proto("cgi")
    with pytest.raises(TypeError, match="must be a str"):
        web_apps.to_proto(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown BackendSpec.interface value 9"):
        web_apps.from_proto(9)


module_level_app = Flask("apps_under_test")


def test_an_app_a_module_holds_is_found_by_import_path() -> None:
    assert web_apps.import_path_of(module_level_app) == f"{__name__}:module_level_app"
    assert web_apps.import_path_of(Flask("nowhere")) is None
    assert web_apps.import_path_of(handler) is None
