"""``/send_message/<recipient>`` and ``/messages``."""

from __future__ import annotations

import sqlalchemy as sa
from flask import current_app, flash, redirect, render_template, url_for
from flask_login import current_user, login_required

from app.extensions import db
from app.messages import bp
from app.messages.forms import ExportForm, MessageForm
from app.models import Message, User, utcnow
from app.paging import paginate
from app.notifications.store import notify, store

PREVIEW_CHARS = 60


def preview(body: str) -> str:
    """The first words of a message, for the toast."""
    if len(body) <= PREVIEW_CHARS:
        return body
    return body[:PREVIEW_CHARS].rsplit(" ", 1)[0] + "…"


@bp.route("/send_message/<recipient>", methods=["GET", "POST"])
@login_required
def send_message(recipient: str):
    """Write to ``recipient``; the message and their new unread count commit together."""
    user = db.first_or_404(sa.select(User).where(User.username == recipient))
    if user.id == current_user.id:
        flash("You cannot send a message to yourself.", "warning")
        return redirect(url_for("main.user", username=recipient))
    form = MessageForm()
    if form.validate_on_submit():
        msg = Message(sender_id=current_user.id, recipient_id=user.id, body=form.message.data)
        db.session.add(msg)
        db.session.flush()
        store(user, "unread_message_count", user.unread_message_count())
        store(
            user,
            "new_message",
            {"message_id": msg.id, "sender": current_user.username, "preview": preview(msg.body)},
        )
        db.session.commit()  # publishes both notifications
        flash(f"Your message to {user.username} has been sent.", "success")
        return redirect(url_for("main.user", username=recipient))
    return render_template("messages/send_message.html", title="Send message", form=form, recipient=user)


@bp.route("/messages")
@login_required
def messages():
    """Received messages, newest first; visiting marks them all read."""
    page = paginate(
        sa.select(Message)
        .where(Message.recipient_id == current_user.id)
        .order_by(Message.timestamp.desc(), Message.id.desc()),
        current_app.config["MESSAGES_PER_PAGE"],
    )
    had_unread = current_user.unread_message_count() > 0
    current_user.last_message_read_time = utcnow()
    if had_unread:
        notify(current_user, "unread_message_count", 0)  # clears the badge in every tab
    else:
        db.session.commit()
    return render_template(
        "messages/messages.html", title="Messages", page=page, export_form=ExportForm()
    )
