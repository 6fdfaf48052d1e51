# A FastAPI app served whole by Turnout: "examples.fastapi_app:app" in docs/apps.md.
import asyncio
import contextlib

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse


@contextlib.asynccontextmanager
async def lifespan(app):
    # Runs once per replica, before it takes requests: load the model here.
    yield {"model": {"answer": 42}}


app = FastAPI(lifespan=lifespan)


@app.get("/ask/{name}")
async def ask(name: str, request: Request, polite: bool = False):
    answer = request.state.model["answer"]
    return {"to": name, "answer": answer, "polite": polite, "root_path": request.scope["root_path"]}


@app.get("/tokens")
async def tokens():
    async def words():
        for word in ["Once", "upon", "a", "time"]:
            await asyncio.sleep(0.2)  # a model producing its next token
            yield word + "\n"

    return StreamingResponse(words(), media_type="text/plain")
