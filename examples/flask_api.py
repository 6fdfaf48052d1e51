# A Flask app served whole by Turnout: "examples.flask_api:app" in docs/apps.md.
import time

from flask import Flask, Response, redirect, request, stream_with_context, url_for

app = Flask(__name__)


@app.get("/items/<int:item_id>")
def item(item_id):
    return {"id": item_id, "fields": request.args.getlist("field")}


@app.post("/items")
def create_item():
    return {"created": request.form["name"]}, 201


@app.get("/latest")
def latest():
    return redirect(url_for("item", item_id=42))


@app.get("/export")
def export():
    # A body of unknown length streams: each row leaves as it is made.
    def rows():
        for n in range(int(request.args.get("rows", 3))):
            time.sleep(0.2)  # a slow query's next row
            yield f"{n},row {n}\n"

    return Response(stream_with_context(rows()), mimetype="text/csv")
