"""Register, log in and log out."""

from __future__ import annotations

from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy.exc import IntegrityError

from app.auth import bp
from app.auth.forms import LoginForm, LogoutForm, RegistrationForm
from app.auth.sessions import end_every_login, end_login, start_login
from app.auth.throttle import Attempt, per_address
from app.extensions import db
from app.limits import form_error, limiter, setting
from app.models import User, check_password


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site, else None (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    if not target.isprintable():  # CR/LF would split the Location header
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def _register_page(error: str | None = None) -> str:
    form = RegistrationForm()
    if error:
        form.form_errors.append(error)
    return render_template("auth/register.html", title="Register", form=form)


def _login_page(error: str | None = None) -> str:
    form = LoginForm()
    if error:
        form.form_errors.append(error)
    return render_template("auth/login.html", title="Log in", form=form)


@bp.route("/register", methods=["GET", "POST"])
@limiter.limit(
    setting("REGISTER_RATE"),
    key_func=per_address,
    methods=["POST"],
    on_breach=form_error(_register_page, "registrations"),
)
def register():
    """Create an account and log it in."""
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
            flash("Welcome to Tidings!", "success")
            return _logged_in(user, Attempt(user.username), url_for("main.index"), remember=False)
    return render_template("auth/register.html", title="Register", form=form)


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(
    setting("LOGIN_RATE_PER_ADDRESS"),
    key_func=per_address,
    methods=["POST"],
    on_breach=form_error(_login_page, "login attempts"),
)
def login():
    """Log in; ``?next=`` is honoured for local paths only. Throttled by ``app.auth.throttle``."""
    next_page = safe_next(request.args.get("next"))
    if current_user.is_authenticated:
        return redirect(next_page or url_for("main.index"))
    form = LoginForm()
    if form.validate_on_submit():
        attempt = Attempt(form.username.data)
        wait = attempt.wait()
        if wait:
            message = f"Too many failed logins for this account. Please try again in {wait} seconds."
            return _login_page(message), 429, {"Retry-After": str(wait)}
        user = db.session.scalar(sa.select(User).where(User.username == form.username.data))
        if not check_password(user, form.password.data):
            attempt.failed()
            flash("Invalid username or password.", "danger")
            return render_template("auth/login.html", title="Log in", form=form), 200
        return _logged_in(user, attempt, next_page or url_for("main.index"), form.remember_me.data)
    return render_template("auth/login.html", title="Log in", form=form)


def _logged_in(user: User, attempt: Attempt, target: str, remember: bool) -> Response:
    """Start ``user``'s login in this browser, which is trusted for the account from now on."""
    start_login(user)
    login_user(user, remember=remember)
    response = redirect(target)
    attempt.remember(response)
    return response


@bp.route("/logout", methods=["GET", "POST"])
@login_required
def logout():
    """GET: a confirmation form. POST (CSRF): revoke this login, its cookies and its streams."""
    form = LogoutForm()
    if not form.validate_on_submit():
        return render_template("auth/logout.html", title="Log out", form=form)
    end_login(current_user)
    logout_user()
    flash("You have been logged out.", "info")
    return redirect(url_for("main.index"))


@bp.route("/logout_everywhere", methods=["POST"])
@login_required
def logout_everywhere():
    """Revoke every login of this account: every browser's cookies and streams, this one's too."""
    form = LogoutForm()
    if not form.validate_on_submit():
        abort(400, "The form expired. Please try again.")
    count = end_every_login(current_user)
    logout_user()
    flash(f"You have been logged out everywhere ({count} {'login' if count == 1 else 'logins'}).", "info")
    return redirect(url_for("main.index"))
