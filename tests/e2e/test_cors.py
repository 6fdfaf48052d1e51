"""CORS as an endpoint option, over real HTTP: the proxy answers preflights
itself and adds the headers to answers for allowed origins only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import turnout

SITE = "https://app.example"


class Logged:
    """Appends each call's method to a file: shows which requests reached it."""

    def __init__(self, log: str) -> None:
        self.log = log

    def __call__(self, request: Any) -> Any:
        with open(self.log, "a") as out:
            out.write(request.method + "\n")
        return turnout_response()


def turnout_response() -> Any:
    from werkzeug.wrappers import Response

    return Response("ok", headers={"X-Total": "3"})


@pytest.fixture
def endpoint(
    client: turnout.Client, unique: Callable[[str], str], tmp_path: Path
) -> Iterator[tuple[str, str, Path]]:
    """(name, URL, call log) of an endpoint with a CORS policy."""
    name = unique("cors")
    log = tmp_path / "calls"
    client.create_backend(name, Logged, str(log))
    client.create_endpoint(
        name,
        name,
        route=f"/{name}",
        methods=["GET", "PUT"],
        cors={
            "allow_origins": [SITE],
            "allow_headers": ["X-Token"],
            "expose_headers": ["X-Total"],
            "allow_credentials": True,
            "max_age": 120,
        },
    )
    yield name, f"{client.http_address}/{name}", log
    client.delete_endpoint(name)
    client.delete_backend(name)


def preflight(url: str, origin: str, method: str, headers: str = "") -> requests.Response:
    sent = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        sent["Access-Control-Request-Headers"] = headers
    return requests.options(url, headers=sent, timeout=30)


def test_the_proxy_answers_a_preflight_without_calling_the_backend(
    endpoint: tuple[str, str, Path],
) -> None:
    _, url, log = endpoint
    answer = preflight(url, SITE, "PUT", "X-Token, Content-Type")
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == SITE
    assert answer.headers["Access-Control-Allow-Methods"] == "GET, PUT"
    assert "x-token" in answer.headers["Access-Control-Allow-Headers"].split(", ")
    assert answer.headers["Access-Control-Allow-Credentials"] == "true"
    assert answer.headers["Access-Control-Max-Age"] == "120"
    assert not log.exists()


def test_answers_to_an_allowed_origin_carry_the_headers(endpoint: tuple[str, str, Path]) -> None:
    _, url, log = endpoint
    answer = requests.put(url, headers={"Origin": SITE}, timeout=30)
    assert answer.status_code == 200 and answer.text == "ok"
    assert answer.headers["Access-Control-Allow-Origin"] == SITE
    assert answer.headers["Access-Control-Expose-Headers"] == "X-Total"
    assert "Origin" in answer.headers["Vary"]
    assert log.read_text() == "PUT\n"


def test_another_origin_gets_no_cors_header(endpoint: tuple[str, str, Path]) -> None:
    _, url, _ = endpoint
    answer = requests.get(url, headers={"Origin": "https://evil.example"}, timeout=30)
    assert answer.status_code == 200
    assert not [h for h in answer.headers if h.lower().startswith("access-control-")]
    rejected = preflight(url, "https://evil.example", "GET")
    assert rejected.status_code == 400
    assert rejected.json()["error"] == "CorsRejected"
    assert not [h for h in rejected.headers if h.lower().startswith("access-control-")]


def test_a_preflight_for_a_method_or_header_not_allowed_is_refused(
    endpoint: tuple[str, str, Path],
) -> None:
    _, url, _ = endpoint
    assert "DELETE" in preflight(url, SITE, "DELETE").json()["message"]
    assert "X-Secret" in preflight(url, SITE, "GET", "X-Secret").json()["message"]


def test_a_plain_options_request_is_still_the_endpoints_to_refuse(
    endpoint: tuple[str, str, Path],
) -> None:
    _, url, _ = endpoint
    answer = requests.options(url, headers={"Origin": SITE}, timeout=30)
    assert answer.status_code == 405
    assert answer.headers["Access-Control-Allow-Origin"] == SITE


def test_the_policy_can_be_changed_and_removed(
    client: turnout.Client, endpoint: tuple[str, str, Path]
) -> None:
    name, url, _ = endpoint
    client.update_endpoint(name, cors={"allow_origins": ["*"]})
    answer = requests.get(url, headers={"Origin": "https://other.example"}, timeout=30)
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    client.update_endpoint(name, cors=False)
    answer = requests.get(url, headers={"Origin": SITE}, timeout=30)
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert preflight(url, SITE, "GET").status_code == 405


def test_a_bad_policy_is_refused_before_anything_is_created(
    client: turnout.Client, endpoint: tuple[str, str, Path], unique: Callable[[str], str]
) -> None:
    name, _, _ = endpoint
    with pytest.raises(ValueError, match="is not an origin"):
        client.create_endpoint(unique("bad"), name, cors={"allow_origins": ["app.example"]})
    with pytest.raises(ValueError, match="unknown cors option"):
        client.update_endpoint(name, cors={"allow_origins": ["*"], "origins": []})
