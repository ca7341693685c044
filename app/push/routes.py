"""``/sw.js`` (the service worker, scope ``/``), ``POST`` / ``DELETE /push/subscriptions`` (the
profile page's script: the browser's ``PushSubscription.toJSON()``; its CSRF token in
``X-CSRFToken``) and ``POST /push/subscriptions/<id>/remove`` (the list of devices' form)."""

from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa
from flask import current_app, flash, redirect, request, send_from_directory, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required
from sqlalchemy.exc import IntegrityError

from app.extensions import csrf, db
from app.i18n import current_language
from app.models import PushSubscription
from app.push import bp, subscriptions
from app.responses import json_error
from app.security import check_script_csrf

STATIC_JS = Path(__file__).resolve().parent.parent / "static" / "js"


@bp.route("/sw.js")
def service_worker():
    """The service worker, from the site's root so that its scope is the whole site."""
    response = send_from_directory(STATIC_JS, "sw.js", mimetype="text/javascript", max_age=0)
    response.headers["Cache-Control"] = "no-cache"  # browsers check for a new one on each visit
    return response


def _script(view):
    """A route of the profile's script: JSON 401 when logged out (never the login page), and the
    page's token in ``X-CSRFToken`` (a CSRFError, 400, without it)."""

    @functools.wraps(view)
    def checked(*args, **kwargs):
        if not current_user.is_authenticated:
            return json_error(401, _("log in to manage notifications on this device"))
        check_script_csrf()
        return view(*args, **kwargs)

    return checked


@bp.route("/push/subscriptions", methods=["POST"])
@csrf.exempt
@_script
def subscribe():
    """Store this device's subscription, for this login: 201 with its id and the device count."""
    try:
        submitted = subscriptions.parse(
            request.get_json(silent=True), current_app.config["PUSH_ALLOWED_ORIGINS"]
        )
    except subscriptions.Refused as exc:
        return json_error(exc.status, str(exc))
    args = (current_user, current_user.login_token, submitted, current_language(), request.user_agent.string)
    try:
        try:
            row = subscriptions.store(*args)
            db.session.commit()
        except IntegrityError:  # the same endpoint stored by another request at this moment
            db.session.rollback()
            row = subscriptions.store(*args)
            db.session.commit()
    except subscriptions.Refused as exc:
        db.session.rollback()
        return json_error(exc.status, str(exc))
    devices = len(subscriptions.of_user(current_user.id))
    return {"id": row.id, "devices": devices}, 201


@bp.route("/push/subscriptions", methods=["DELETE"])
@csrf.exempt
@_script
def unsubscribe():
    """Forget this device's subscription (``{"endpoint": …}``): 204, or 404 if it is not the user's."""
    body = request.get_json(silent=True)
    endpoint = body.get("endpoint") if isinstance(body, dict) else None
    if not isinstance(endpoint, str):
        return json_error(400, _('the body must be {"endpoint": …}'))
    done = db.session.execute(
        sa.delete(PushSubscription).where(
            PushSubscription.endpoint == endpoint, PushSubscription.user_id == current_user.id
        )
    )
    db.session.commit()
    if not done.rowcount:
        return json_error(404, _("this device is not subscribed"))
    return "", 204


@bp.route("/push/subscriptions/<int:subscription_id>/remove", methods=["POST"])
@login_required
def remove(subscription_id: int):
    """The list of devices' button: that device gets no more pushes."""
    done = db.session.execute(
        sa.delete(PushSubscription).where(
            PushSubscription.id == subscription_id, PushSubscription.user_id == current_user.id
        )
    )
    db.session.commit()
    if done.rowcount:
        flash(_("That device will not be notified any more."), "info")
    return redirect(url_for("main.user", username=current_user.username) + "#devices")
