"""Backends and endpoints served over HTTP by real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from conftest import Deploy, processes_mentioning, wait_until
from werkzeug.wrappers import Response

import turnout

ROOT = Path(__file__).resolve().parents[2]


def whoami(request: Any) -> int:
    return os.getpid()


class Counter:
    def __init__(self, start: int) -> None:
        self.count = start

    def __call__(self, request: Any) -> dict[str, int]:
        self.count += 1
        return {"count": self.count, "pid": os.getpid()}


def fail(request: Any) -> None:
    raise ZeroDivisionError("the model divided by zero")


def test_key_concepts_example_prints_hello_world(default_ports: None) -> None:
    # The seed program, unchanged: it serves on 127.0.0.1:8000 and prints the
    # HTTP answer; its instance must be gone once it exits.
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "key_concepts.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello world"


def test_class_backend_keeps_state(
    client: turnout.Client, http: requests.Session, deploy: Deploy
) -> None:
    app = deploy(Counter, 41)
    first = http.get(app.url).json()
    second = http.get(app.url).json()
    assert first["count"] == 42
    assert second == {"count": 43, "pid": first["pid"]}


def test_two_replicas_answer_from_two_processes_and_scale(
    client: turnout.Client, http: requests.Session, deploy: Deploy
) -> None:
    app = deploy(whoami, config={"num_replicas": 2})

    def pids_seen(n: int = 60) -> set[int]:
        return {http.get(app.url).json() for _ in range(n)}

    listed = {r.pid for r in client.list_replicas(app.backend) if r.state == "RUNNING"}
    assert len(listed) == 2
    assert pids_seen() == listed

    client.update_backend_config(app.backend, {"num_replicas": 1})
    assert client.get_backend_config(app.backend).num_replicas == 1
    remaining = {r.pid for r in client.list_replicas(app.backend)}
    assert len(remaining) == 1 and remaining < listed
    assert pids_seen(20) == remaining

    client.update_backend_config(app.backend, turnout.BackendConfig(num_replicas=2))
    again = {r.pid for r in client.list_replicas(app.backend) if r.state == "RUNNING"}
    assert len(again) == 2 and remaining < again
    assert pids_seen() == again


def test_unknown_route_is_404_json(http: requests.Session, url: Callable[[str], str]) -> None:
    reply = http.get(url("/no/such/route"))
    assert reply.status_code == 404
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json()["error"] == "NotFound"


def test_wrong_method_is_405_with_allow(
    client: turnout.Client, http: requests.Session, deploy: Deploy
) -> None:
    app = deploy(whoami, methods=["GET", "post"])
    reply = http.delete(app.url)
    assert reply.status_code == 405
    # HEAD comes with GET, as in Flask.
    assert set(reply.headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST", "HEAD"}
    assert reply.json()["error"] == "MethodNotAllowed"
    assert http.post(app.url).status_code == 200
    got, head = http.get(app.url), http.head(app.url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(got.content))


def test_handler_exception_is_500_json_and_traceback_is_logged(
    client: turnout.Client, http: requests.Session, deploy: Deploy
) -> None:
    app = deploy(fail)
    reply = http.get(app.url)
    assert reply.status_code == 500
    body = reply.json()
    assert body["error"] == "ZeroDivisionError"
    assert body["message"] == "the model divided by zero"
    assert "Traceback" not in reply.text
    (replica,) = [r for r in client.list_replicas() if r.backend == app.backend]
    log_file = Path(replica.log_path)
    assert log_file.is_relative_to(client.log_dir)

    def logged() -> bool:
        text = log_file.read_text()
        return (
            "Traceback" in text
            and "the model divided by zero" in text
            and body["request_id"] in text
        )

    wait_until(logged, timeout=10)


def chatty(request: Any) -> str:
    word = str(request.args["word"])
    print(f"said {word}")
    print(f"warned {word}", file=sys.stderr)
    return word


def test_what_a_handler_prints_goes_to_the_rotated_log(
    client: turnout.Client, http: requests.Session, deploy: Deploy
) -> None:
    app = deploy(chatty)
    marker = f"m{os.getpid()}"
    assert http.get(app.url, params={"word": marker}).text == marker
    (replica,) = [r for r in client.list_replicas() if r.backend == app.backend]
    log_file = Path(replica.log_path)

    def logged() -> bool:
        text = log_file.read_text()
        return (
            f"INFO print.stdout: said {marker}" in text
            and f"WARNING print.stderr: warned {marker}" in text
        )

    wait_until(logged, timeout=10)
    # Not also in the raw output file, which nothing rotates.
    raw = log_file.with_suffix(".out")
    assert marker not in (raw.read_text() if raw.exists() else "")


def test_killed_replica_is_replaced_and_serves_again(
    client: turnout.Client, http: requests.Session, deploy: Deploy
) -> None:
    app = deploy(whoami)
    old = http.get(app.url).json()
    os.kill(old, signal.SIGKILL)

    def replaced() -> bool:
        replicas = client.list_replicas(app.backend)
        return any(r.state == "RUNNING" and r.pid not in (0, old) for r in replicas)

    wait_until(replaced)
    # The operator sees that it was restarted, and why (issue 20).
    (replica,) = client.list_replicas(app.backend)
    assert replica.restarts == 1
    assert replica.last_error == "process exited with code -9"
    assert replica.error == ""

    def serves_from_new_pid() -> bool:
        reply = http.get(app.url)
        return reply.status_code == 200 and reply.json() != old

    wait_until(serves_from_new_pid)


def test_503_when_only_replica_dies_while_controller_is_stopped(
    client: turnout.Client, http: requests.Session, deploy: Deploy
) -> None:
    app = deploy(whoami)
    replica_pid = http.get(app.url).json()
    controller_pid = client.controller_pid
    os.kill(controller_pid, signal.SIGSTOP)
    try:
        # With the controller frozen, the proxy keeps serving on its last snapshot...
        assert http.get(app.url).json() == replica_pid
        os.kill(replica_pid, signal.SIGKILL)
        wait_until(lambda: not processes_mentioning(f"--replica-id {app.backend}#"), timeout=10)

        # ...and a backend whose only replica is gone answers 503 JSON, promptly.
        # A request that races the crash may go into the dying connection
        # before the proxy sees it close: that one is a 502 (it may have run).
        def refused() -> bool:
            reply = http.get(app.url, timeout=10)
            assert reply.status_code in (502, 503)
            assert reply.headers["Content-Type"].startswith("application/json")
            assert reply.json()["error"]
            return reply.status_code == 503

        wait_until(refused, timeout=10)
    finally:
        os.kill(controller_pid, signal.SIGCONT)

    def recovered() -> bool:
        reply = http.get(app.url)
        return reply.status_code == 200 and reply.json() != replica_pid

    wait_until(recovered)


# ---- the Flask request surface, over HTTP --------------------------------


def echo_request(request: Any) -> dict[str, Any]:
    upload = request.files.get("upload")
    return {
        "method": request.method,
        "path": request.path,
        "url": request.url,
        "args": request.args.to_dict(flat=False),
        "form": request.form.to_dict(flat=False),
        "file": [upload.filename, upload.read().decode()] if upload else None,
        "json": request.get_json(silent=True),
        "data": request.data.decode("latin-1"),
        "header": request.headers.get("X-Custom"),
        "cookies": request.cookies.to_dict(),
    }


def test_flask_request_surface(
    client: turnout.Client, http: requests.Session, deploy: Deploy
) -> None:
    app = deploy(echo_request, methods=["GET", "POST", "PUT", "PATCH"])
    target = app.url

    got = http.get(
        target + "?a=1&a=2&b=x%20y",
        headers={"X-Custom": "hi"},
        cookies={"session": "abc"},
    ).json()
    assert got["method"] == "GET"
    assert got["path"] == app.route
    assert got["url"] == target + "?a=1&a=2&b=x%20y"
    assert got["args"] == {"a": ["1", "2"], "b": ["x y"]}
    assert got["header"] == "hi"
    assert got["cookies"] == {"session": "abc"}

    form = http.post(target, data={"name": "ada", "lang": ["py", "c"]}).json()
    assert form["method"] == "POST"
    assert form["form"] == {"name": ["ada"], "lang": ["py", "c"]}

    upload = http.put(target, files={"upload": ("notes.txt", b"some notes")}).json()
    assert upload["method"] == "PUT"
    assert upload["file"] == ["notes.txt", "some notes"]

    payload = {"x": [1, 2, 3], "y": {"z": None}}
    sent = http.patch(target, json=payload).json()
    assert sent["method"] == "PATCH"
    assert sent["json"] == payload

    raw = http.post(target, data=b"\x00raw bytes\xff").json()
    assert raw["data"] == "\x00raw bytes\xff"


# ---- return value conversion -----------------------------------------------


def returns(request: Any) -> Any:
    kind = request.args["kind"]
    if kind == "none":
        return None
    if kind == "str":
        return "héllo"
    if kind == "bytes":
        return b"\x01\x02"
    if kind == "response":
        response = Response("teapot", status=418, headers={"X-Extra": "1"})
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response
    return {"kind": kind, "list": [1, 2.5, "three"]}


def test_return_values_convert_as_documented(
    client: turnout.Client, http: requests.Session, deploy: Deploy
) -> None:
    app = deploy(returns)
    target = app.url

    none = http.get(target, params={"kind": "none"})
    assert (none.status_code, none.content) == (200, b"")

    text = http.get(target, params={"kind": "str"})
    assert text.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert text.text == "héllo"

    data = http.get(target, params={"kind": "bytes"})
    assert data.headers["Content-Type"] == "application/octet-stream"
    assert data.content == b"\x01\x02"

    custom = http.get(target, params={"kind": "response"})
    assert custom.status_code == 418
    assert custom.text == "teapot"
    assert custom.headers["X-Extra"] == "1"
    assert custom.cookies.get_dict() == {"a": "1", "b": "2"}

    other = http.get(target, params={"kind": "json"})
    assert other.headers["Content-Type"] == "application/json"
    assert json.loads(other.text) == {"kind": "json", "list": [1, 2.5, "three"]}


class Model:
    def __call__(self, request: Any) -> str:
        return "call"

    def explain(self, request: Any) -> str:
        return f"explain {request.args.get('x')}"


def test_call_method_header_picks_the_method(
    client: turnout.Client, http: requests.Session, deploy: Deploy
) -> None:
    app = deploy(Model)
    target = app.url
    assert http.get(target).text == "call"
    assert http.get(target + "?x=1", headers={"X-Serve-Call-Method": "explain"}).text == (
        "explain 1"
    )
    missing = http.get(target, headers={"X-Serve-Call-Method": "nope"})
    assert missing.status_code == 404
    assert missing.json()["error"] == "MethodNotFound"
    private = http.get(target, headers={"X-Serve-Call-Method": "__init__"})
    assert private.status_code == 404


def test_request_id_is_echoed_and_made_when_missing(
    client: turnout.Client, http: requests.Session, deploy: Deploy
) -> None:
    app = deploy(whoami)
    given = http.get(app.url, headers={"X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"
    made = http.get(app.url).headers["X-Request-Id"]
    assert made and made != "abc-123"
