"""Register, log in and log out."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy.exc import IntegrityError

from app.auth import bp
from app.auth.forms import LoginForm, RegistrationForm
from app.auth.sessions import end_login_session, start_login_session
from app.extensions import db
from app.models import User
from app.notifications.events import Event
from app.notifications.hub import session_tag
from app.notifications.kinds import SESSION_ENDED
from app.notifications.store import publish


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site, else None (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


@bp.route("/register", methods=["GET", "POST"])
def register():
    """Create an account, then ask the user to log in."""
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = RegistrationForm()
    if form.validate_on_submit():
        user = User(username=form.username.data, email=form.email.data)
        user.set_password(form.password.data)
        db.session.add(user)
        try:
            db.session.commit()
        except IntegrityError:
            # Someone took the name or address between validation and commit.
            db.session.rollback()
            form.username.errors.append("That username or email address was just taken.")
        else:
            flash("Welcome to Tidings! You can log in now.", "success")
            return redirect(url_for("auth.login"))
    return render_template("auth/register.html", title="Register", form=form)


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Log in; ``?next=`` is honoured for local paths only."""
    next_page = safe_next(request.args.get("next"))
    if current_user.is_authenticated:
        return redirect(next_page or url_for("main.index"))
    form = LoginForm()
    if form.validate_on_submit():
        user = db.session.scalar(sa.select(User).where(User.username == form.username.data))
        if user is None or not user.check_password(form.password.data):
            flash("Invalid username or password.", "danger")
            return render_template("auth/login.html", title="Log in", form=form), 200
        login_user(user, remember=form.remember_me.data)
        start_login_session()
        return redirect(next_page or url_for("main.index"))
    return render_template("auth/login.html", title="Log in", form=form)


@bp.route("/logout", methods=["GET", "POST"])
@login_required
def logout():
    """End the session and close this login's open streams in every worker."""
    sid = end_login_session()
    user_id = current_user.id
    logout_user()
    if sid:
        publish(user_id, Event(name=SESSION_ENDED, data={"session": session_tag(sid)}, timestamp=time.time()))
    flash("You have been logged out.", "info")
    return redirect(url_for("main.index"))
