"""``/send_message/<recipient>``, the inbox ``/messages`` and the message export."""

from __future__ import annotations

import sqlalchemy as sa
from flask import abort, current_app, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user, login_required

from app.extensions import db
from app.limits import form_error, limiter, per_user, setting
from app.messages import bp
from app.messages.forms import ExportForm, MessageForm
from app.models import Message, Task, User, utcnow
from app.notifications import tidings
from app.paging import paginate
from app.responses import json_error, wants_json
from app.tasks import TaskAlreadyRunning, TaskNotStarted, export_path, launch_task

PREVIEW_CHARS = 60


def preview(body: str) -> str:
    """The first words of a message, for the toast."""
    if len(body) <= PREVIEW_CHARS:
        return body
    return body[:PREVIEW_CHARS].rsplit(" ", 1)[0] + "…"


def _send_page(error: str) -> str:
    user = db.first_or_404(sa.select(User).where(User.username == request.view_args["recipient"]))
    form = MessageForm()
    form.form_errors.append(error)
    return render_template("messages/send_message.html", title="Send message", form=form, recipient=user)


@bp.route("/send_message/<recipient>", methods=["GET", "POST"])
@login_required
@limiter.limit(
    setting("SEND_RATE"), key_func=per_user, methods=["POST"], on_breach=form_error(_send_page, "messages")
)
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

        def unread() -> int:
            """Counted once the recipient is locked: concurrent sends count each other's messages,
            and a concurrent "all read" (its read time, committed) is seen."""
            db.session.refresh(user, ["last_message_read_time"])
            return user.unread_message_count()

        tidings.notify(user, "unread_message_count", unread)
        tidings.notify(
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
        tidings.notify(current_user, "unread_message_count", 0)  # clears the badge in every tab
    db.session.commit()
    tasks = db.session.scalars(
        sa.select(Task)
        .where(Task.user_id == current_user.id, Task.name == "export_messages")
        .order_by(Task.created_at.desc())
        .limit(3)
    ).all()
    return render_template(
        "messages/messages.html", title="Messages", page=page, export_form=ExportForm(), tasks=tasks
    )


@bp.route("/export_messages", methods=["POST"])
@login_required
@limiter.limit(setting("EXPORT_RATE"), key_func=per_user, error_message="Too many exports; try again later.")
def export_messages():
    """Start a background export of the user's messages (one at a time)."""
    form = ExportForm()
    if not form.validate_on_submit():
        abort(400, "The form expired. Please try again.")
    try:
        task = launch_task(current_user, "export_messages", "Exporting your messages")
    except TaskAlreadyRunning:
        if wants_json():
            return json_error(409, "an export of your messages is already running")
        flash("An export of your messages is already running.", "warning")
    except TaskNotStarted:
        if wants_json():
            return json_error(503, "the export could not be started; please try again shortly")
        flash("The export could not be started. Please try again shortly.", "danger")
    else:
        if wants_json():
            return {"task_id": task.id, "status": task.status}, 202
        flash("Your messages are being exported.", "info")
    return redirect(url_for("messages.messages"))


@bp.route("/exports/<task_id>")
@login_required
def download_export(task_id: str):
    """The finished export file, for its owner only (anyone else: 404)."""
    task = db.session.get(Task, task_id[:36])
    if task is None or task.user_id != current_user.id or task.status != "finished":
        abort(404)
    path = export_path(current_app, current_user.id, task.id)
    if not path.is_file():
        abort(404, "That export is no longer available.")
    return send_file(
        path,
        mimetype="application/json",
        as_attachment=True,
        download_name=f"tidings-messages-{current_user.username}.json",
    )
