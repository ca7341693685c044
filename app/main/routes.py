"""Home, ``/users`` and ``/user/<username>``."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from flask import current_app, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from app.extensions import db
from app.main import bp
from app.models import User, utcnow
from app.paging import paginate

# Writing last_seen on every request would turn reads into writes; once a minute is enough.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)


@bp.before_app_request
def record_last_seen() -> None:
    """Keep the logged-in user's "last seen" roughly current."""
    if request.endpoint in (None, "static") or request.blueprint == "tidings":
        return
    if current_user.is_authenticated:
        now = utcnow()
        if current_user.last_seen is None or now - current_user.last_seen > LAST_SEEN_RESOLUTION:
            current_user.last_seen = now
            db.session.commit()


@bp.route("/")
def index():
    """Home page."""
    return render_template("main/index.html", title="Home")


@bp.route("/users")
@login_required
def users():
    """Directory of users, paginated."""
    page = paginate(sa.select(User).order_by(User.username), current_app.config["USERS_PER_PAGE"])
    return render_template("main/users.html", title="Users", page=page)


@bp.route("/user/<username>")
@login_required
def user(username: str):
    """A user's profile."""
    profile = db.first_or_404(sa.select(User).where(User.username == username))
    i_blocked = profile.id != current_user.id and current_user.has_blocked(profile)
    return render_template("main/user.html", title=profile.username, user=profile, i_blocked=i_blocked)


@bp.route("/favicon.ico")
def favicon():
    """Browsers ask for it on their own: the site's icon."""
    return redirect(url_for("static", filename="favicon.svg"), 301)
