"""A stranger's Flask app, written from docs/extension.md alone: customers whose primary keys are
uuid hex strings, Flask-Login's default identity, and an "order shipped" notification sent
from a view. tests/integration/test_stranger.py runs it from a fresh venv with nothing but
``pip install <checkout>``."""

import os
import uuid

from flask import Flask, redirect, render_template_string
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user
from flask_sqlalchemy import SQLAlchemy

from flask_tidings import Kind, NotificationMixin, SQLAlchemyStore, Tidings

app = Flask(__name__)
app.config.update(
    SECRET_KEY="shop-secret",
    REDIS_URL=os.environ["REDIS_URL"],
    SQLALCHEMY_DATABASE_URI=os.environ["DATABASE_URL"],
)
db = SQLAlchemy(app)
login_manager = LoginManager(app)


class Customer(UserMixin, db.Model):
    id = db.Column(db.String(32), primary_key=True, default=lambda: uuid.uuid4().hex)
    name = db.Column(db.String(64), unique=True)


class Notification(NotificationMixin, db.Model):
    user_id = db.Column(db.ForeignKey(Customer.id), index=True)


tidings = Tidings(
    kinds=[Kind("order_shipped", per="order")],
    store=SQLAlchemyStore(db, Notification, lock_rows_of=Customer),
)
tidings.init_app(app, url_prefix="/live")
login_manager.user_loader(lambda customer_id: db.session.get(Customer, customer_id))
with app.app_context():
    db.create_all()


@app.route("/")
@login_required
def index():
    return render_template_string(
        "<body {{ tidings.attributes() }}>Hello {{ current_user.name }}{{ tidings.scripts() }}</body>"
    )


@app.route("/about")
def about():
    return "A shop with live notifications."


@app.route("/login/<name>")
def log_in(name: str):
    customer = db.session.scalar(db.select(Customer).filter_by(name=name))
    if customer is None:
        db.session.add(customer := Customer(name=name))
        db.session.commit()
    login_user(customer)
    return redirect("/")


@app.post("/orders/<order>/ship")
@login_required
def ship(order: str):
    event = tidings.notify(current_user, "order_shipped", {"order": order})
    db.session.commit()
    return {"id": event.id, "customer": current_user.id}
