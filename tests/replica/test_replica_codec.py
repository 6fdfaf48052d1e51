"""What a handler sees of a request and what its return value becomes (no sockets)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import pytest
from werkzeug.exceptions import BadRequest, HTTPException, MethodNotAllowed, NotFound
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from turnout.replica import codec
from turnout.v1 import http_pb2, replica_pb2


def http(
    method: str = "GET",
    path: str = "/",
    query: str = "",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    host: str = "example.com:8000",
    scheme: str = "http",
    remote_addr: str = "10.1.2.3:5555",
) -> http_pb2.HttpRequest:
    return http_pb2.HttpRequest(
        method=method,
        scheme=scheme,
        host=host,
        path=path,
        query_string=query,
        headers=[http_pb2.Header(name=n, value=v) for n, v in [("Host", host), *(headers or [])]],
        body=body,
        remote_addr=remote_addr,
    )


MakeRequest = Callable[[http_pb2.HttpRequest], Request]


@pytest.fixture
def make_request() -> Iterator[MakeRequest]:
    """Builds requests, closing them (and their uploaded files) afterwards."""
    made: list[Request] = []

    def make(msg: http_pb2.HttpRequest) -> Request:
        made.append(codec.http_to_request(msg))
        return made[-1]

    yield make
    for request in made:
        request.close()


def headers_of(response: http_pb2.HttpResponse) -> list[tuple[str, str]]:
    return [(h.name, h.value) for h in response.headers]


def json_body(response: http_pb2.HttpResponse) -> Any:
    assert ("Content-Type", "application/json") in headers_of(response)
    return json.loads(response.body)


# --- the request a handler receives over HTTP --------------------------------


def test_the_request_is_a_werkzeug_request_built_on_first_use() -> None:
    request = codec.http_to_request(http(path="/a", query="x=1"))
    assert isinstance(request, Request)
    request.close()  # untouched: nothing to close, nothing built

    request = codec.http_to_request(http(method="POST", path="/b", body=b"hi"))
    assert request.environ["werkzeug.request"] is request
    assert (request.method, request.path, request.get_data()) == ("POST", "/b", b"hi")
    assert repr(request) == "<DeferredRequest 'http://example.com:8000/b' [POST]>"
    # A name that does not exist is missing on first use and after it.
    untouched = codec.http_to_request(http())
    for _ in range(2):
        with pytest.raises(AttributeError, match="has no attribute 'jsn'"):
            untouched.jsn  # type: ignore[attr-defined]  # noqa: B018
    assert untouched.path == "/"
    copy = cloudpickle.loads(cloudpickle.dumps(codec.http_to_request(http(query="k=v"))))
    assert copy.args["k"] == "v"
    request.close()


def test_query_args_keep_repeated_keys_and_decode_percent_escapes(
    make_request: MakeRequest,
) -> None:
    request = make_request(http(query="x=1&x=2&name=J%C3%BCrgen&empty="))
    assert request.args.getlist("x") == ["1", "2"]
    assert request.args["x"] == "1"
    assert request.args["name"] == "Jürgen"
    assert request.args["empty"] == ""
    assert request.args.get("missing", "default") == "default"


def test_urlencoded_form_post(make_request: MakeRequest) -> None:
    request = make_request(
        http(
            method="POST",
            headers=[("Content-Type", "application/x-www-form-urlencoded")],
            body=b"name=Ada+Lovelace&tag=a&tag=b",
        )
    )
    assert request.method == "POST"
    assert request.form["name"] == "Ada Lovelace"
    assert request.form.getlist("tag") == ["a", "b"]
    assert request.args == {}


def test_multipart_file_upload_has_filename_content_and_fields(
    make_request: MakeRequest,
) -> None:
    boundary = "XyZ123"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="caption"\r\n\r\n'
            "a cat\r\n"
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="image"; filename="cat.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\x89PNG\r\n\x00\xff"
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = make_request(
        http(
            method="POST",
            headers=[("Content-Type", f"multipart/form-data; boundary={boundary}")],
            body=body,
        )
    )
    upload = request.files["image"]
    assert upload.filename == "cat.png"
    assert upload.mimetype == "image/png"
    assert upload.read() == b"\x89PNG\r\n\x00\xff"
    assert request.form["caption"] == "a cat"


def test_json_body_through_json_and_get_json(make_request: MakeRequest) -> None:
    request = make_request(
        http(
            method="POST",
            headers=[("Content-Type", "application/json")],
            body=b'{"values": [1, 2.5, null], "name": "x"}',
        )
    )
    assert request.is_json
    assert request.json == {"values": [1, 2.5, None], "name": "x"}
    assert request.get_json() == {"values": [1, 2.5, None], "name": "x"}


def test_json_of_a_non_json_body_is_refused_as_flask_does(make_request: MakeRequest) -> None:
    request = make_request(http(method="POST", body=b"{}"))
    with pytest.raises(HTTPException) as raised:
        _ = request.json
    assert raised.value.code == 415
    assert request.get_json(silent=True) is None
    assert request.get_json(force=True) == {}


def test_raw_body_is_data_even_without_content_length(make_request: MakeRequest) -> None:
    # A chunked upload reaches the replica de-chunked, with no Content-Length.
    request = make_request(
        http(method="PUT", headers=[("Transfer-Encoding", "chunked")], body=b"\x00raw\xffbytes")
    )
    assert request.data == b"\x00raw\xffbytes"
    assert request.get_data() == b"\x00raw\xffbytes"


def test_empty_body_is_empty_data(make_request: MakeRequest) -> None:
    request = make_request(http())
    assert request.data == b""
    assert request.content_length is None


def test_headers_are_case_insensitive_and_repeated_ones_are_joined(
    make_request: MakeRequest,
) -> None:
    request = make_request(
        http(
            headers=[
                ("Accept", "text/html"),
                ("accept", "application/json"),
                ("X-Custom-Header", "yes"),
                ("User-Agent", "pytest/1"),
            ]
        )
    )
    assert request.headers["Accept"] == "text/html, application/json"
    assert request.headers["x-custom-header"] == "yes"
    assert request.user_agent.string == "pytest/1"
    assert request.headers["Host"] == "example.com:8000"


def test_cookies_from_repeated_cookie_headers(make_request: MakeRequest) -> None:
    request = make_request(
        http(headers=[("Cookie", "session=abc; theme=dark"), ("Cookie", "lang=fr")])
    )
    assert request.cookies.to_dict() == {"session": "abc", "theme": "dark", "lang": "fr"}


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
def test_method(make_request: MakeRequest, method: str) -> None:
    assert make_request(http(method=method)).method == method


def test_path_is_percent_decoded_and_url_is_whole(make_request: MakeRequest) -> None:
    request = make_request(
        http(path="/models/caf%C3%A9/a%20b", query="q=1", host="api.example.com", scheme="https")
    )
    assert request.path == "/models/café/a b"
    assert request.full_path == "/models/café/a b?q=1"
    # werkzeug (and so Flask) gives URLs as IRIs: non-ASCII stays readable.
    assert request.url == "https://api.example.com/models/café/a%20b?q=1"
    assert request.base_url == "https://api.example.com/models/café/a%20b"
    assert request.host == "api.example.com"
    assert request.scheme == "https"
    assert request.is_secure


def test_encoded_slash_stays_one_path_segment_character(make_request: MakeRequest) -> None:
    assert make_request(http(path="/a%2Fb")).path == "/a/b"


def test_client_address(make_request: MakeRequest) -> None:
    assert make_request(http(remote_addr="10.1.2.3:5555")).remote_addr == "10.1.2.3"
    assert make_request(http(remote_addr="[::1]:5555")).remote_addr == "::1"
    assert make_request(http(remote_addr="")).remote_addr is None


# --- the request a handler receives from a Python handle ---------------------


def test_python_call_exposes_the_object_itself() -> None:
    payload = {"tensor": [1, 2, 3], "when": {1, 2}}
    msg = replica_pb2.PythonCall(
        pickled_data=cloudpickle.dumps(payload),
        pickled_kwargs=cloudpickle.dumps({"top_k": 3, "ids": [7, 8]}),
        headers=[http_pb2.Header(name="X-Trace", value="t1")],
    )
    request = codec.call_to_request(msg)
    assert request.data == payload
    assert request.json == payload
    assert request.get_json() == payload
    assert request.args["top_k"] == 3
    # A list kwarg is one value, not several.
    assert request.args["ids"] == [7, 8]
    assert request.method == "GET"
    assert request.path == "/"
    assert request.headers["X-Trace"] == "t1"


def test_python_call_defaults_and_method() -> None:
    request = codec.call_to_request(replica_pb2.PythonCall(http_method="post"))
    assert request.data is None
    assert request.args == {}
    assert request.method == "POST"


# --- what a return value becomes ---------------------------------------------


def test_none_is_an_empty_200() -> None:
    response = codec.encode_http(None)
    assert (response.status, response.body) == (200, b"")


def test_str_is_utf8_text() -> None:
    response = codec.encode_http("héllo")
    assert response.status == 200
    assert headers_of(response) == [("Content-Type", "text/plain; charset=utf-8")]
    assert response.body == "héllo".encode()


@pytest.mark.parametrize("value", [b"\x00\x01bin", bytearray(b"\x00\x01bin")])
def test_bytes_are_octet_stream(value: bytes | bytearray) -> None:
    response = codec.encode_http(value)
    assert response.status == 200
    assert headers_of(response) == [("Content-Type", "application/octet-stream")]
    assert response.body == b"\x00\x01bin"


@pytest.mark.parametrize("value", [{"a": [1, 2.5, None]}, [1, "two"], 3, 2.5, True, ("t", 1)])
def test_anything_else_is_json(value: object) -> None:
    response = codec.encode_http(value)
    assert response.status == 200
    assert json_body(response) == json.loads(json.dumps(value))


def test_response_keeps_status_headers_in_order_and_body() -> None:
    response = Response("created", status=201, mimetype="text/csv")
    response.headers["X-Model"] = "v2"
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    answer = codec.encode_http(response)
    assert answer.status == 201
    assert answer.body == b"created"
    headers = headers_of(answer)
    assert ("Content-Type", "text/csv; charset=utf-8") in headers
    assert ("X-Model", "v2") in headers
    assert [v for n, v in headers if n == "Set-Cookie"] == ["a=1; Path=/", "b=2; Path=/"]
    assert [n for n, _ in headers].index("X-Model") < [n for n, _ in headers].index("Set-Cookie")


def test_streamed_response_is_collected_and_closed() -> None:
    closed = []

    def chunks() -> Iterator[bytes]:
        try:
            yield b"a"
            yield b"b"
        finally:
            closed.append(True)

    response = Response(chunks(), status=202)
    response.call_on_close(lambda: closed.append(True))
    answer = codec.encode_http(response)
    assert (answer.status, answer.body) == (202, b"ab")
    assert closed


def test_unencodable_return_is_a_500_naming_the_type() -> None:
    class Model:
        pass

    # What the servicer answers when encode_http refuses the value.
    with pytest.raises(codec.BadReturnValue) as refused:
        codec.encode_http(Model())
    answer = codec.error_response(refused.value, "req-1")
    assert answer.status == 500
    body = json_body(answer)
    assert body["error"] == "BadReturnValue"
    assert "Model" in body["message"]
    assert body["request_id"] == "req-1"
    assert "Traceback" not in answer.body.decode()


def test_encode_http_raises_for_unencodable_values() -> None:
    with pytest.raises(codec.BadReturnValue, match="set"):
        codec.encode_http({1, 2})


# --- errors ------------------------------------------------------------------


def test_exception_is_a_500_with_type_and_message_but_no_traceback() -> None:
    try:
        raise ValueError("bad input: 42")
    except ValueError as exc:
        answer = codec.error_response(exc, "req-9")
    assert answer.status == 500
    assert json_body(answer) == {
        "error": "ValueError",
        "message": "bad input: 42",
        "request_id": "req-9",
    }


def test_http_exception_keeps_its_status_like_flask_abort() -> None:
    answer = codec.error_response(NotFound(), "r")
    assert answer.status == 404
    assert json_body(answer) == {
        "error": "NotFound",
        "message": NotFound.description,
        "request_id": "r",
    }
    custom = codec.error_response(BadRequest("missing field 'x'"), "r")
    assert custom.status == 400
    assert json_body(custom) == {
        "error": "BadRequest",
        "message": "missing field 'x'",
        "request_id": "r",
    }


def test_http_exception_keeps_its_headers() -> None:
    answer = codec.error_response(MethodNotAllowed(valid_methods=["GET", "POST"]), "r")
    assert answer.status == 405
    assert ("Allow", "GET, POST") in headers_of(answer)
    assert [n for n, _ in headers_of(answer)].count("Content-Type") == 1


def test_abort_with_a_response_sends_that_response() -> None:
    exc = HTTPException(response=Response("teapot", status=418))
    answer = codec.error_response(exc, "r")
    assert (answer.status, answer.body) == (418, b"teapot")


def test_error_response_status_can_be_chosen() -> None:
    answer = codec.error_response(LookupError("no method 'x'"), "r", status=404)
    assert answer.status == 404
    assert json_body(answer)["error"] == "LookupError"


def test_same_request_as_werkzeug_builds_for_a_wsgi_server(make_request: MakeRequest) -> None:
    headers = [("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", "a=1")]
    body = b"f=1&f=2"
    ours = make_request(
        http(
            method="POST",
            path="/p%C3%A4th/x%20y",
            query="q=%C3%A9&q=2",
            headers=headers,
            body=body,
            host="localhost:8000",
        )
    )
    builder = EnvironBuilder(
        method="POST",
        path="/p%C3%A4th/x%20y",
        query_string="q=%C3%A9&q=2",
        headers=[("Host", "localhost:8000"), ("Cookie", "a=1")],
        content_type="application/x-www-form-urlencoded",
        data=body,
    )
    try:
        reference = Request(builder.get_environ())
        for attribute in ("method", "path", "full_path", "url", "host", "content_type"):
            assert getattr(ours, attribute) == getattr(reference, attribute), attribute
        assert list(ours.args.lists()) == list(reference.args.lists())
        assert list(ours.form.lists()) == list(reference.form.lists())
        assert ours.cookies == reference.cookies
        reference.close()
    finally:
        builder.close()


def test_numpy_values_are_json_as_ray_serve_sends_them() -> None:
    import numpy as np

    answer = codec.encode_http(
        {
            "label": np.int64(3),
            "score": np.float32(0.5),
            "ok": np.bool_(True),
            "row": np.arange(3),
            "grid": [np.zeros((2, 2), dtype=np.float32)],
        }
    )
    assert answer.status == 200
    assert json_body(answer) == {
        "label": 3,
        "score": 0.5,
        "ok": True,
        "row": [0, 1, 2],
        "grid": [[[0.0, 0.0], [0.0, 0.0]]],
    }
    assert json_body(codec.encode_http(np.arange(2))) == [0, 1]


def test_bytes_and_exceptions_inside_an_answer_are_text_as_in_ray_serve() -> None:
    answer = codec.encode_http(
        {"raw": b"caf\xc3\xa9", "items": [bytearray(b"x")], "why": KeyError("k")}
    )
    assert json_body(answer) == {"raw": "café", "items": ["x"], "why": "'k'"}
    with pytest.raises(codec.BadReturnValue, match="can't decode"):
        codec.encode_http({"raw": b"\xff"})


def test_answers_never_import_numpy_themselves() -> None:
    script = (
        "import sys\n"
        "from turnout.replica import codec, server\n"
        "codec.encode_http({'a': [1, 2.5]})\n"
        "print('numpy' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_a_malformed_json_body_read_by_the_handler_is_a_camel_case_400(
    make_request: MakeRequest,
) -> None:
    request = make_request(
        http(method="POST", headers=[("Content-Type", "application/json")], body=b"{oops")
    )
    with pytest.raises(HTTPException) as raised:
        _ = request.json
    answer = codec.error_response(raised.value, "r")
    assert answer.status == 400
    assert json_body(answer)["error"] == "BadRequest"
    assert codec.camel_case("I'm a teapot") == "ImATeapot"
    assert codec.camel_case("Request Entity Too Large") == "RequestEntityTooLarge"


@pytest.mark.parametrize(
    "value",
    ["ok", "", "é" * 1000, b"\x00\xff" * 70_000, bytearray(b"raw"), {"a": [1, 2]}, None],
    ids=["str", "empty", "unicode", "bytes", "bytearray", "json", "none"],
)
def test_the_answer_in_pieces_reads_back_as_the_same_http_answer(value: object) -> None:
    # The stream path sends these pieces; a sender parses them as HttpResponse.
    joined = b"".join(codec.encode_http_pieces(value))
    assert http_pb2.HttpResponse.FromString(joined) == codec.encode_http(value)
