"""CORS policies: validation and the headers they answer with (turnout._internal.cors)."""

from __future__ import annotations

from typing import Any

import pytest

from turnout._internal.cors import CorsPolicy, CorsRejected
from turnout.errors import InvalidArgumentError

SITE = "https://app.example"


def policy(**options: Any) -> CorsPolicy:
    return CorsPolicy.from_dict({"allow_origins": [SITE], **options})


def test_an_allowed_origin_gets_its_own_origin_back_and_vary() -> None:
    assert policy().headers_for(SITE) == [
        ("Access-Control-Allow-Origin", SITE),
        ("Vary", "Origin"),
    ]


def test_another_origin_and_no_origin_get_no_cors_header() -> None:
    assert policy().headers_for("https://evil.example") == []
    assert policy().headers_for(None) == []


def test_any_origin_is_a_star_unless_credentials_are_allowed() -> None:
    anyone = CorsPolicy.from_dict({"allow_origins": ["*"]})
    assert anyone.headers_for("https://x.example") == [("Access-Control-Allow-Origin", "*")]
    with_credentials = CorsPolicy.from_dict({"allow_origins": ["*"], "allow_credentials": True})
    assert with_credentials.headers_for("https://x.example") == [
        ("Access-Control-Allow-Origin", "https://x.example"),
        ("Vary", "Origin"),
        ("Access-Control-Allow-Credentials", "true"),
    ]


def test_exposed_headers_are_listed() -> None:
    headers = dict(policy(expose_headers=["X-Total", "X-Page"]).headers_for(SITE))
    assert headers["Access-Control-Expose-Headers"] == "X-Total, X-Page"


def test_a_preflight_lists_methods_headers_and_max_age() -> None:
    answer = dict(
        policy(allow_headers=["X-Token"], max_age=30).preflight(
            SITE, "POST", "x-token, content-type", ["GET", "POST"]
        )
    )
    assert answer["Access-Control-Allow-Origin"] == SITE
    assert answer["Access-Control-Allow-Methods"] == "GET, POST"
    assert "x-token" in answer["Access-Control-Allow-Headers"].split(", ")
    assert answer["Access-Control-Max-Age"] == "30"


def test_a_preflight_for_what_is_not_allowed_is_rejected() -> None:
    with pytest.raises(CorsRejected, match="origin 'https://evil.example'"):
        policy().preflight("https://evil.example", "GET", "", ["GET"])
    with pytest.raises(CorsRejected, match="method 'DELETE' is not allowed; allowed: GET"):
        policy().preflight(SITE, "DELETE", "", ["GET"])
    with pytest.raises(CorsRejected, match="X-Secret"):
        policy().preflight(SITE, "GET", "X-Secret", ["GET"])


def test_star_methods_and_headers_allow_any() -> None:
    answer = dict(
        policy(allow_methods=["*"], allow_headers=["*"]).preflight(
            SITE, "PATCH", "X-Anything", ["GET"]
        )
    )
    assert "PATCH" in answer["Access-Control-Allow-Methods"]
    assert answer["Access-Control-Allow-Headers"] == "X-Anything"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs allow_origins"),
        ({"allow_origins": []}, "at least one origin"),
        ({"allow_origins": ["app.example"]}, "is not an origin"),
        ({"allow_origins": ["https://app.example/path"]}, "is not an origin"),
        ({"allow_origins": [SITE], "allow_methods": ["GE T"]}, "is not an HTTP method"),
        ({"allow_origins": [SITE], "expose_headers": ["X:Y"]}, "is not a header name"),
        ({"allow_origins": [SITE], "max_age": -1}, "max_age must be 0 to 86400"),
        ({"allow_origins": [SITE], "allow_origin": [SITE]}, "unknown cors option"),
    ],
)
def test_bad_values_are_refused_with_what_is_wrong(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        CorsPolicy.from_dict(options)


@pytest.mark.parametrize(
    "options",
    [
        {"allow_origins": SITE},
        {"allow_origins": [SITE], "allow_credentials": "yes"},
        {"allow_origins": [SITE], "max_age": 1.5},
        {"allow_origins": [1]},
    ],
)
def test_wrong_types_are_type_errors(options: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        CorsPolicy.from_dict(options)


def test_a_policy_round_trips_through_its_proto_and_dict() -> None:
    original = policy(
        allow_methods=["get", "POST"],
        allow_headers=["X-Token"],
        expose_headers=["X-Total"],
        allow_credentials=True,
        max_age=5,
    )
    assert original.allow_methods == ("GET", "POST")
    assert CorsPolicy.from_proto(original.to_proto()) == original
    assert CorsPolicy.from_dict(original.to_dict()) == original
