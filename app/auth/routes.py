"""Register, log in and log out."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import redis
import sqlalchemy as sa
from flask import Response, abort, current_app, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_login import current_user, login_required, login_user, logout_user
from itsdangerous import BadSignature, URLSafeTimedSerializer
from rq import Retry
from sqlalchemy.exc import IntegrityError

from app.auth import bp
from app.auth.forms import LoginForm, LogoutForm, RegistrationForm, ResetPasswordForm, ResetRequestForm
from app.auth.sessions import end_every_login, end_login, start_login
from app.auth.throttle import Attempt, forget_devices, per_address, trusted_login
from app.extensions import db
from app.i18n import current_language
from app.limits import form_error, limiter, setting
from app.models import User, check_password, hash_password
from app.responses import safe_next
from app.tasks import task_queue

log = logging.getLogger(__name__)


def _form_page(form_class: type, template: str, title: str) -> Callable[[str | None], str]:
    """A page's form rendered afresh, with ``error`` on it (a limit's answer)."""

    def render(error: str | None = None) -> str:
        form = form_class()
        if error:
            form.form_errors.append(error)
        return render_template(template, title=title, form=form)

    return render


_register_page = _form_page(RegistrationForm, "auth/register.html", _l("Register"))
_login_page = _form_page(LoginForm, "auth/login.html", _l("Log in"))
_reset_request_page = _form_page(ResetRequestForm, "auth/reset_request.html", _l("Reset your password"))


@bp.route("/register", methods=["GET", "POST"])
@limiter.limit(
    setting("REGISTER_RATE"),
    key_func=per_address,
    methods=["POST"],
    on_breach=form_error(
        _register_page,
        lambda n: ngettext(
            "Too many registrations. Please try again in %(num)d second.",
            "Too many registrations. Please try again in %(num)d seconds.",
            n,
        ),
    ),
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
            form.username.errors.append(_("That username or email address was just taken."))
        else:
            flash(_("Welcome to Tidings!"), "success")
            return _logged_in(user, Attempt(user.username), url_for("main.index"), remember=False)
    return render_template("auth/register.html", title=_("Register"), form=form)


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(
    setting("LOGIN_RATE_PER_ADDRESS"),
    key_func=per_address,
    methods=["POST"],
    exempt_when=trusted_login,
    on_breach=form_error(
        _login_page,
        lambda n: ngettext(
            "Too many login attempts. Please try again in %(num)d second.",
            "Too many login attempts. Please try again in %(num)d seconds.",
            n,
        ),
    ),
)
def login():
    """Log in; ``?next=`` is honoured for local paths only. Throttled by ``app.auth.throttle``."""
    next_page = safe_next(request.args.get("next"))
    if current_user.is_authenticated:
        return redirect(next_page or url_for("main.index"))
    form = LoginForm()
    if form.validate_on_submit():
        attempt = Attempt(form.username.data)
        wait = attempt.begin()
        if wait:
            message = ngettext(
                "Too many failed logins for this account. Please try again in %(num)d second.",
                "Too many failed logins for this account. Please try again in %(num)d seconds.",
                wait,
            )
            return _login_page(message), 429, {"Retry-After": str(wait)}
        user = db.session.scalar(sa.select(User).where(User.username == form.username.data))
        if not check_password(user, form.password.data):
            attempt.failed()
            flash(_("Invalid username or password."), "danger")
            return render_template("auth/login.html", title=_("Log in"), form=form), 200
        attempt.succeeded()
        return _logged_in(user, attempt, next_page or url_for("main.index"), form.remember_me.data)
    return render_template("auth/login.html", title=_("Log in"), form=form)


def _logged_in(user: User, attempt: Attempt, target: str, remember: bool) -> Response:
    """Start ``user``'s login in this browser, which is trusted for the account from now on.
    The form token minted before it (perhaps planted by someone else) stops working."""
    session.pop(current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"), None)
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
        return render_template("auth/logout.html", title=_("Log out"), form=form)
    end_login(current_user)
    logout_user()
    flash(_("You have been logged out."), "info")
    return redirect(url_for("main.index"))


@bp.route("/logout_everywhere", methods=["POST"])
@login_required
def logout_everywhere():
    """Revoke every login of this account: every browser's cookies and streams, this one's too."""
    form = LogoutForm()
    if not form.validate_on_submit():
        abort(400, _("The form expired. Please try again."))
    count = end_every_login(current_user)
    logout_user()
    flash(
        ngettext(
            "You have been logged out everywhere (%(num)d login).",
            "You have been logged out everywhere (%(num)d logins).",
            count,
        ),
        "info",
    )
    return redirect(url_for("main.index"))


# -- a way back in --------------------------------------------------------------------------

RESET_SALT = "tidings-password-reset"


def reset_token(user: User) -> str:
    """A signed link token for ``user``: it expires after RESET_TOKEN_SECONDS and stops working
    once the password changes (it carries a fingerprint of the current hash), so it works once."""
    return URLSafeTimedSerializer(current_app.secret_key, salt=RESET_SALT).dumps(
        {"user": user.id, "hash": _fingerprint(user)}
    )


def reset_lifetime() -> str:
    """How long a reset link works, in words ("30 minutes"), in the current language."""
    seconds = current_app.config["RESET_TOKEN_SECONDS"]
    if seconds % 60 == 0:
        return ngettext("%(num)d minute", "%(num)d minutes", seconds // 60)
    return ngettext("%(num)d second", "%(num)d seconds", seconds)


def _fingerprint(user: User) -> str:
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


def _user_of_reset(token: str) -> User | None:
    """The user a reset token is for, if it is genuine, fresh and unused."""
    serializer = URLSafeTimedSerializer(current_app.secret_key, salt=RESET_SALT)
    try:
        claims = serializer.loads(token, max_age=current_app.config["RESET_TOKEN_SECONDS"])
    except BadSignature:  # tampered, truncated or expired (SignatureExpired is one)
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("user"), int):
        return None
    user = db.session.get(User, claims["user"])
    if user is None or not hmac.compare_digest(str(claims.get("hash")), _fingerprint(user)):
        return None
    return user


def link_origin() -> str | None:
    """Where links in mails point: ``PUBLIC_URL``; without it (development) the request's own
    origin, but only when its host is one of ``MAIL_LINK_HOSTS`` (loopback by default), so a
    forged Host header never lands in someone's mail; None otherwise."""
    configured = current_app.config["PUBLIC_URL"]
    if configured:
        return configured
    if urlsplit(request.host_url).hostname in current_app.config["MAIL_LINK_HOSTS"]:
        return request.host_url.rstrip("/")
    return None


@bp.route("/reset_password", methods=["GET", "POST"])
@limiter.limit(
    setting("RESET_RATE"),
    key_func=per_address,
    methods=["POST"],
    on_breach=form_error(
        _reset_request_page,
        lambda n: ngettext(
            "Too many reset requests. Please try again in %(num)d second.",
            "Too many reset requests. Please try again in %(num)d seconds.",
            n,
        ),
    ),
)
def reset_password_request():
    """Mail a reset link to an address. The answer is the same whether or not an account has it,
    and so is its timing: the background worker looks the address up and sends the mail."""
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = ResetRequestForm()
    if form.validate_on_submit():
        base = link_origin()
        try:
            if base is None:
                # A Host nobody vouched for: no mail carries a link to it, and the answer is the same.
                log.warning("no reset mail for a request to host %r: set PUBLIC_URL", request.host)
            else:
                task_queue().enqueue(
                    "workers.jobs.send_password_reset",
                    form.email.data,
                    base,
                    current_language(),
                    job_timeout=60,
                    retry=Retry(max=3, interval=[10, 60, 300]),  # the mail server may be away a while
                )
        except redis.RedisError as exc:
            log.warning("could not queue a password-reset mail: %s", exc)
            form.form_errors.append(_("We cannot send mail right now. Please try again in a minute."))
            return render_template("auth/reset_request.html", title=_("Reset your password"), form=form), 503
        flash(
            _(
                "If an account uses %(email)s, a link to choose a new password is on its way. "
                "It works once, for %(lifetime)s.",
                email=form.email.data,
                lifetime=reset_lifetime(),
            ),
            "info",
        )
        return redirect(url_for("auth.login"))
    return render_template("auth/reset_request.html", title=_("Reset your password"), form=form)


@bp.route("/reset_password/<token>", methods=["GET", "POST"])
def reset_password(token: str):
    """Choose a new password from a mailed link; every other login of the account ends."""
    user = _user_of_reset(token)
    if user is None:
        flash(_("That link has expired or was already used. Ask for a new one below."), "warning")
        return redirect(url_for("auth.reset_password_request"))
    form = ResetPasswordForm()
    if form.validate_on_submit():
        # Only if the password is still the one the link was made for: of two uses at once
        # (a double click, a stolen copy), one wins.
        changed = db.session.execute(
            sa.update(User)
            .where(User.id == user.id, User.password_hash == user.password_hash)
            .values(password_hash=hash_password(form.password.data))
        ).rowcount
        db.session.commit()
        if not changed:
            flash(_("That link was already used. Ask for a new one below."), "warning")
            return redirect(url_for("auth.reset_password_request"))
        end_every_login(user)
        forget_devices(user.username)
        if current_user.is_authenticated:
            logout_user()
        flash(_("Your password is changed, and every other browser is logged out."), "success")
        return _logged_in(user, Attempt(user.username), url_for("main.index"), remember=False)
    return render_template("auth/reset_password.html", title=_("Choose a new password"), form=form)
