# The apps bench/app_backends.py serves: the same "ok" as a handler would answer.
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from flask import Flask

flask_app = Flask(__name__)


@flask_app.get("/")
def flask_ok() -> str:
    return "ok"


fastapi_app = FastAPI()


@fastapi_app.get("/", response_class=PlainTextResponse)
async def fastapi_ok() -> str:
    return "ok"
