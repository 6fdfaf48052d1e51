"""The "Key Concepts" program of Ray Serve 0.8's backends and endpoints API.

Run it with ``python examples/key_concepts.py``: it starts a local Turnout
instance (HTTP on 127.0.0.1:8000), serves two backends and prints what the
endpoint answers over HTTP.
"""

import requests

import turnout as serve

serve.init()


def handle_request(flask_request):
    return "hello world"


class RequestHandler:
    def __init__(self):
        self.msg = "hello, world!"

    def __call__(self, flask_request):
        return self.msg


serve.create_backend("simple_backend", handle_request)
serve.create_backend("simple_backend_class", RequestHandler)
serve.create_endpoint("simple_endpoint", "simple_backend", route="/simple", methods=["GET"])

print(requests.get("http://127.0.0.1:8000/simple").text)
