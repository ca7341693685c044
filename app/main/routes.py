"""Home, ``/users`` and ``/user/<username>``."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from flask import abort, current_app, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required

from app.extensions import db
from app.i18n import COOKIE, COOKIE_SECONDS, LANGUAGES
from app.main import bp
from app.models import Notification, User, utcnow
from app.paging import paginate
from app.presence import shown
from app.push import keys as push_keys
from app.push import subscriptions
from app.responses import safe_next

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
    return render_template("main/index.html", title=_("Home"))


@bp.route("/users")
@login_required
def users():
    """Directory of users, paginated."""
    page = paginate(sa.select(User).order_by(User.username), current_app.config["USERS_PER_PAGE"])
    return render_template("main/users.html", title=_("Users"), page=page, presence=shown(page.items))


@bp.route("/user/<username>")
@login_required
def user(username: str):
    """A user's profile."""
    profile = db.first_or_404(sa.select(User).where(User.username == username))
    i_blocked = profile.id != current_user.id and current_user.has_blocked(profile)
    mine = profile.id == current_user.id
    return render_template(
        "main/user.html",
        title=profile.username,
        user=profile,
        i_blocked=i_blocked,
        presence=shown([profile])[profile.id],
        devices=subscriptions.of_user(profile.id) if mine else [],
        device_name=subscriptions.device_name,
        vapid_key=push_keys.current().public_key if mine else None,
    )


@bp.route("/language", methods=["POST"])
def language():
    """Choose the site's language (``language``: a code of LANGUAGES, or empty for the browser's):
    remembered in a cookie on this browser and, for a logged-in user, on every device."""
    choice = request.form.get("language", "")
    if choice and choice not in LANGUAGES:
        abort(400, _("There is no such language."))
    if current_user.is_authenticated:
        current_user.language = choice or None
        db.session.commit()
    response = redirect(safe_next(request.form.get("next")) or url_for("main.index"))
    if choice:
        response.set_cookie(
            COOKIE,
            choice,
            max_age=COOKIE_SECONDS,
            samesite="Lax",
            httponly=True,
            secure=current_app.config["SESSION_COOKIE_SECURE"],
        )
    else:
        response.delete_cookie(COOKIE)
    return response


@bp.route("/notifications/<int:notification_id>/dismiss", methods=["POST"])
@login_required
def dismiss_notification(notification_id: int):
    """Dismiss one of the user's services' notifications: no page shows it again."""
    kinds = list(current_app.extensions.get("service_kinds", {}))
    db.session.execute(
        sa.delete(Notification).where(
            Notification.id == notification_id,
            Notification.user_id == current_user.id,
            Notification.name.in_(kinds),
        )
    )
    db.session.commit()
    return "", 204


@bp.route("/favicon.ico")
def favicon():
    """Browsers ask for it on their own: the site's icon."""
    return redirect(url_for("static", filename="favicon.svg"), 301)
