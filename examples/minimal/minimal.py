"""The smallest Flask app with live notifications from Flask-Tidings: its own users, no messages."""

import os

import click
from flask import Flask, redirect, render_template_string, request
from flask_login import LoginManager, UserMixin, login_user
from flask_sqlalchemy import SQLAlchemy
from redis import Redis
from rq import Queue

from flask_tidings import Kind, NotificationMixin, SQLAlchemyStore, Tidings

app = Flask(__name__)
app.config.update(
    SECRET_KEY=os.environ.get("SECRET_KEY", "dev"),
    REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    SQLALCHEMY_DATABASE_URI=os.environ.get("DATABASE_URL", "sqlite:///minimal.db"),
)
db = SQLAlchemy(app)
login_manager = LoginManager(app)


class User(UserMixin, db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(64), unique=True)


class Notification(NotificationMixin, db.Model):
    """Each user's latest notification per kind (pings: per text)."""


tidings = Tidings(app, kinds=[Kind("ping", per="text")], store=SQLAlchemyStore(db, Notification))
login_manager.user_loader(lambda user_id: db.session.get(User, int(user_id)))
with app.app_context():
    db.create_all()

PAGE = """<!doctype html><body {{ tidings.attributes(replay=True) }}>
<form method="post" action="/login"><input name="name"><button>Log in</button></form>
<ul id="pings"></ul>{{ tidings.scripts() }}
<script>Tidings.on("ping", function (n) {
  var li = document.createElement("li"); li.textContent = n.data.text; pings.append(li); });</script>"""


@app.route("/")
def index():
    return render_template_string(PAGE)


@app.post("/login")
def log_in():
    user = db.session.scalar(db.select(User).filter_by(name=request.form["name"]))
    if user is None:
        db.session.add(user := User(name=request.form["name"]))
        db.session.commit()
    login_user(user)
    return redirect("/")


def ping(name: str, text: str) -> None:
    """Store a ping for NAME: it reaches their open pages once committed (an RQ job, too)."""
    with app.app_context():
        tidings.notify(db.session.scalar(db.select(User).filter_by(name=name)), "ping", {"text": text})
        db.session.commit()


@app.cli.command("ping")
@click.argument("name")
@click.argument("text")
@click.option("--later", is_flag=True, help="send it from the RQ worker")
def ping_command(name: str, text: str, later: bool) -> None:
    """Send TEXT to the user called NAME, now or from the RQ worker."""
    if later:
        Queue(connection=Redis.from_url(app.config["REDIS_URL"])).enqueue(ping, name, text)
    else:
        ping(name, text)
