"""Whole WSGI and ASGI apps as backends, over real HTTP: a Flask app and a
FastAPI app (tests/e2e/web_apps.py) mounted under an endpoint's route."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from http.client import HTTPConnection, IncompleteRead
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
import requests
import sseclient
import web_apps
from conftest import wait_until

import turnout


@pytest.fixture(scope="module")
def lifespan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lifespan")


@pytest.fixture(scope="module", params=["flask", "fastapi"])
def mounted(
    request: pytest.FixtureRequest, client: turnout.Client, lifespan_dir: Path
) -> Iterator[str]:
    """The URL of the app's route: one Flask and one FastAPI app, each at /<name>."""
    kind = request.param
    app = web_apps.flask_app if kind == "flask" else web_apps.fastapi_app
    name = f"app-{kind}"
    client.create_backend(
        name, app, replica_options={"env": {web_apps.LIFESPAN_DIR: str(lifespan_dir)}}
    )
    client.create_endpoint(name, name, route=f"/{name}", methods=["GET", "POST"])
    yield f"{client.http_address}/{name}"
    client.delete_endpoint(name)
    client.delete_backend(name)


def test_path_parameters_and_query_strings_reach_the_app(
    mounted: str, http: requests.Session
) -> None:
    answer = http.get(f"{mounted}/items/42", params={"q": "x y"})
    assert answer.status_code == 200
    assert answer.json()["id"] == 42
    assert answer.json()["q"] in (["x y"], "x y")


def test_the_app_sees_its_route_as_its_mount_point(mounted: str, http: requests.Session) -> None:
    answer = http.get(f"{mounted}/where")
    assert answer.status_code == 200
    seen = answer.json()
    route = "/" + mounted.rsplit("/", 1)[1]
    if "script_root" in seen:  # WSGI: SCRIPT_NAME is the route, PATH_INFO the rest
        assert (seen["script_root"], seen["path"]) == (route, "/where")
    else:  # ASGI: root_path is the route, path the whole path
        assert (seen["root_path"], seen["path"]) == (route, f"{route}/where")
    assert seen["url"].endswith(f"{route}/where")


def test_form_posts_are_parsed_by_the_app(mounted: str, http: requests.Session) -> None:
    answer = http.post(f"{mounted}/form", data={"name": "ada", "colour": "teal"})
    assert answer.status_code == 200
    body = answer.json()
    assert body.get("form", body) in (
        {"name": ["ada"], "colour": ["teal"]},
        {"name": "ada", "colour": "teal"},
    )


def test_file_uploads_arrive_whole(mounted: str, http: requests.Session) -> None:
    data = b"hello" + bytes(range(256)) * 400
    answer = http.post(f"{mounted}/upload", files={"file": ("notes.bin", data)})
    assert answer.status_code == 200
    assert answer.json() == {"filename": "notes.bin", "size": len(data), "head": "hello"}


def test_cookies_set_by_the_app_come_back_to_it(mounted: str) -> None:
    with requests.Session() as browser:
        assert browser.get(f"{mounted}/cookie/set").status_code == 200
        assert browser.get(f"{mounted}/cookie/get").json() == {"flavour": "oat"}


def test_redirects_point_under_the_route(mounted: str, http: requests.Session) -> None:
    answer = http.get(f"{mounted}/go", allow_redirects=False)
    assert answer.status_code in (302, 307)
    route = "/" + mounted.rsplit("/", 1)[1]
    assert answer.headers["Location"].endswith(f"{route}/items/7")
    followed = http.get(f"{mounted}/go")
    assert followed.status_code == 200 and followed.json()["id"] == 7


def test_a_path_the_app_does_not_know_is_the_apps_404(mounted: str, http: requests.Session) -> None:
    answer = http.get(f"{mounted}/no/such/page")
    assert answer.status_code == 404
    # The app's own answer, not the proxy's ("no endpoint at ...").
    assert "no endpoint" not in answer.text


def test_a_path_that_only_starts_like_the_route_is_not_the_apps(
    mounted: str, http: requests.Session
) -> None:
    answer = http.get(f"{mounted}x/items/1")
    assert answer.status_code == 404
    assert answer.json()["error"] == "NotFound"


def test_an_error_in_the_app_is_a_500(mounted: str, http: requests.Session) -> None:
    assert http.get(f"{mounted}/boom").status_code == 500
    # The replica goes on serving.
    assert http.get(f"{mounted}/items/1").status_code == 200


def test_the_endpoints_methods_still_apply(mounted: str, http: requests.Session) -> None:
    answer = http.delete(f"{mounted}/items/1")
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "GET, POST, HEAD"


def test_a_handle_call_to_an_app_says_it_serves_http_only(
    mounted: str, client: turnout.Client
) -> None:
    name = mounted.rsplit("/", 1)[1]
    with pytest.raises(turnout.errors.TurnoutError, match="answers HTTP requests"):
        client.get_handle(name).remote().result(timeout=30)


def test_an_endless_wsgi_stream_ends_with_its_deadline(
    client: turnout.Client, http: requests.Session, unique: Callable[[str], str], tmp_path: Path
) -> None:
    name = unique("endless")
    client.create_backend(name, web_apps.flask_app)
    client.create_endpoint(name, name, route=f"/{name}", request_timeout=0.5)
    log = tmp_path / "ticks"
    try:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            answer = http.get(f"{client.http_address}/{name}/endless", params={"log": str(log)})
        wait_until(lambda: log.exists())
        # The generator is read no further: the handler thread is free again.
        time.sleep(0.5)
        ticks = log.stat().st_size
        time.sleep(0.5)
        assert log.stat().st_size == ticks
        answer = http.get(f"{client.http_address}/{name}/items/1")
        assert answer.status_code == 200
    finally:
        client.delete_endpoint(name)
        client.delete_backend(name)


# ---- streamed bodies (Flask generators, FastAPI StreamingResponse) ---------


def test_a_streamed_body_arrives_chunk_by_chunk(mounted: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    params = {"gate": str(gate), "who": "ada"}
    with requests.get(f"{mounted}/gated", params=params, stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in response.headers
        assert response.headers["Content-Type"].startswith("text/plain")
        lines = response.iter_lines()
        # The first chunk arrives while the app still waits: not buffered.
        assert next(lines) == b"first"
        gate.touch()
        # Flask's request, read inside the generator (stream_with_context).
        assert list(lines) == [b"ada"]


def test_whole_answers_keep_their_content_length(mounted: str, http: requests.Session) -> None:
    answer = http.get(f"{mounted}/items/3")
    assert answer.status_code == 200
    assert answer.headers["Content-Length"] == str(len(answer.content))
    assert "Transfer-Encoding" not in answer.headers


def test_a_client_going_away_stops_the_apps_stream(mounted: str, tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    response = requests.get(
        f"{mounted}/lines", params={"closed": str(closed)}, stream=True, timeout=30
    )
    lines = response.iter_lines()
    assert next(lines) == b"0"
    assert next(lines) == b"1"
    assert not closed.exists()
    response.close()  # the client goes away mid-stream
    # WSGI: the iterable's close(); ASGI: http.disconnect, and Starlette
    # cancels the body.
    wait_until(closed.exists, timeout=30)


def test_the_deadline_covers_the_apps_whole_stream(mounted: str, tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    received = b""
    with (
        pytest.raises(requests.exceptions.ChunkedEncodingError),
        requests.get(
            f"{mounted}/lines",
            params={"closed": str(closed)},
            stream=True,
            timeout=30,
            # Long enough for the head on a loaded machine; the stream's own
            # end is a minute away.
            headers={"X-Serve-Timeout-Ms": "2000"},
        ) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_content(None):
            received += chunk
    # Cut off part-way: no final chunk, and the body's finally ran.
    assert received.startswith(b"0\n")
    wait_until(closed.exists, timeout=30)


def test_a_slow_reader_pauses_the_apps_stream(mounted: str, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    target = urlsplit(f"{mounted}/counted")
    with socket.create_connection((target.hostname, target.port), timeout=30) as sock:
        # A small receive buffer, so what the kernel holds is small too: the
        # count below is what back-pressure lets through.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        query = urlencode({"count": str(counter)})
        sock.sendall(f"GET {target.path}?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.recv(1024)
        wait_until(counter.exists)
        settled = -1
        for _ in range(50):
            time.sleep(0.1)
            count = int(counter.read_text() or 0)
            if count == settled:
                break
            settled = count
        # All of it produced would mean no back-pressure: what may be pulled
        # is the credit window, plus what the socket buffers hold.
        assert settled < web_apps.COUNTED_CHUNKS // 2, settled
    # The reader left while the app was paused: it is stopped there, not run
    # on to its end (draining 31 MiB through a 4 KiB window would take minutes).
    time.sleep(1)
    assert int(counter.read_text()) < web_apps.COUNTED_CHUNKS


def test_server_sent_events_from_an_app_parse(mounted: str) -> None:
    with requests.get(f"{mounted}/events", stream=True, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = list(sseclient.SSEClient(response.iter_content(None)).events())
    assert [e.data for e in events] == ['{"n": 0}', '{"n": 1}', '{"n": 2}']


def test_an_error_part_way_through_an_apps_stream_aborts_it(
    mounted: str, http: requests.Session
) -> None:
    target = urlsplit(f"{mounted}/broken")
    connection = HTTPConnection(target.hostname or "", target.port, timeout=30)
    try:
        connection.request("GET", target.path)
        answer = connection.getresponse()
        assert answer.status == 200  # the head went out before the app failed
        with pytest.raises(IncompleteRead) as info:
            answer.read()
        assert info.value.partial == b"partial\n"
    finally:
        connection.close()
    # The replica goes on serving.
    assert http.get(f"{mounted}/items/1").status_code == 200


def test_asgi_lifespan_runs_at_start_and_stop(
    client: turnout.Client,
    http: requests.Session,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = unique("lifespan")
    client.create_backend(
        name, web_apps.fastapi_app, replica_options={"env": {web_apps.LIFESPAN_DIR: str(tmp_path)}}
    )
    client.create_endpoint(name, name, route=f"/{name}")
    assert (tmp_path / "started").exists()
    answer = http.get(f"{client.http_address}/{name}/where")
    assert answer.json()["greeting"] == "started by lifespan"
    assert not (tmp_path / "stopped").exists()
    client.delete_endpoint(name)
    client.delete_backend(name)
    wait_until(lambda: (tmp_path / "stopped").exists())


def test_a_failing_lifespan_startup_refuses_the_backend(
    client: turnout.Client, unique: Callable[[str], str]
) -> None:
    name = unique("failing")
    with pytest.raises(ValueError, match="lifespan startup failed.*the model file is missing"):
        client.create_backend(name, web_apps.failing_fastapi_app)
    assert name not in client.list_backends()


def test_an_app_by_import_path_on_the_root_route_serves_every_path(
    client: turnout.Client, http: requests.Session, unique: Callable[[str], str]
) -> None:
    name = unique("raw")
    client.create_backend(name, "web_apps:raw_wsgi")
    client.create_endpoint(name, name, route=f"/{name}")
    try:
        answer = http.get(f"{client.http_address}/{name}/a/b%20c")
        assert answer.text == f"/{name}|/a/b c"
        assert http.get(f"{client.http_address}/{name}").text == f"/{name}|"
    finally:
        client.delete_endpoint(name)
        client.delete_backend(name)


def test_interface_names_an_app_that_detection_would_miss(
    client: turnout.Client, http: requests.Session, unique: Callable[[str], str]
) -> None:
    name = unique("wrapped")
    client.create_backend(name, "web_apps:wrapped_wsgi", interface="wsgi")
    client.create_endpoint(name, name, route=f"/{name}")
    try:
        assert http.get(f"{client.http_address}/{name}/x").text == f"/{name}|/x"
    finally:
        client.delete_endpoint(name)
        client.delete_backend(name)


def test_an_app_object_named_wsgi_travels_by_import_path_too(
    client: turnout.Client, http: requests.Session, unique: Callable[[str], str]
) -> None:
    name = unique("wrapped-object")
    client.create_backend(name, web_apps.wrapped_wsgi, interface="wsgi")
    client.create_endpoint(name, name, route=f"/{name}")
    try:
        assert http.get(f"{client.http_address}/{name}/y").text == f"/{name}|/y"
    finally:
        client.delete_endpoint(name)
        client.delete_backend(name)


def test_a_handler_backend_updated_to_an_app_serves_paths_under_its_route(
    client: turnout.Client, http: requests.Session, unique: Callable[[str], str]
) -> None:
    name = unique("becomes-app")
    client.create_backend(name, "importable_backends:shout")
    client.create_endpoint(name, name, route=f"/{name}")
    try:
        assert http.get(f"{client.http_address}/{name}/x").status_code == 404
        client.update_backend(name, web_apps.raw_wsgi)
        assert client.list_endpoints()[name]["serves_app"] is True
        assert http.get(f"{client.http_address}/{name}/x").text == f"/{name}|/x"
    finally:
        client.delete_endpoint(name)
        client.delete_backend(name)


def test_a_class_whose_instances_are_apps_takes_init_args(
    client: turnout.Client, http: requests.Session, unique: Callable[[str], str]
) -> None:
    name = unique("greeting")
    client.create_backend(name, web_apps.Greeting, "bonjour")
    client.create_endpoint(name, name, route=f"/{name}")
    try:
        assert http.get(f"{client.http_address}/{name}/here").text == "bonjour from /here"
    finally:
        client.delete_endpoint(name)
        client.delete_backend(name)


def test_an_unknown_interface_is_refused(client: turnout.Client) -> None:
    with pytest.raises(ValueError, match="interface must be one of"):
        client.create_backend("never", web_apps.raw_wsgi, interface="cgi")


def test_an_app_the_main_script_defines_is_refused_with_what_to_do(
    client: turnout.Client,
) -> None:
    def app(environ: object, start_response: object) -> list[bytes]:
        return []

    with pytest.raises(ValueError, match="web app, which replicas import.*package.module:app"):
        client.create_backend("never", app)
