# A Flask app served whole by Turnout: "examples.flask_api:app" in docs/apps.md.
from flask import Flask, redirect, request, url_for

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
