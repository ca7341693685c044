"""Conversations (``/messages``, ``/messages/<username>``), sending, blocks and the export."""

from __future__ import annotations

import sqlalchemy as sa
from flask import (
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user, login_required
from sqlalchemy.exc import IntegrityError

from app.extensions import csrf, db
from app.i18n import current_language
from app.limits import form_error, limiter, per_user, setting
from app.messages import bp, threads
from app.messages.forms import ExportForm, MessageForm
from app.models import Task, User
from app.notifications import tidings
from app.paging import paginate
from app.responses import json_error, safe_next, wants_json
from app.security import check_script_csrf
from app.tasks import TaskAlreadyRunning, TaskNotStarted, export_path, launch_task


def _other(username: str) -> User:
    """The user at the other end of a conversation: 404 if unknown; yourself is refused."""
    user = db.first_or_404(sa.select(User).where(User.username == username))
    if user.id == current_user.id:
        abort(404, _("There is no conversation with yourself."))
    return user


MAX_ID = 2**31 - 1  # ids are PostgreSQL integers: a bigger number is no message


def _message_id(raw: str) -> int | None:
    """``raw`` as a message id, or None if it cannot be one."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 10 or int(raw) > MAX_ID:
        return None
    return int(raw)


def _before() -> int | None:
    raw = request.args.get("before")
    if raw is None:
        return None
    before = _message_id(raw)
    if before is None:
        abort(404, _("There is no such page."))
    return before


def _conversation_page(other: User, form: MessageForm, status: int = 200):
    before = _before()
    messages, has_older = threads.thread(current_user, other, before, current_app.config["MESSAGES_PER_PAGE"])
    receipt = threads.seen(current_user, other)
    if receipt is not None and receipt["message_id"] not in {m.id for m in messages}:
        receipt = None  # "Seen" goes under my last message: not on this page
    page = render_template(
        "messages/conversation.html",
        title=other.username,
        other=other,
        messages=messages,
        has_older=has_older,
        older=messages[0].id if messages else None,
        paged=before is not None,
        form=form,
        receipt=receipt,
        i_blocked=current_user.has_blocked(other),
    )
    return page, status


def _refused(message: str, status: int):
    """A send that did not happen: the conversation with the typed text and why (JSON: the error)."""
    if wants_json():
        return json_error(status, message)
    form = MessageForm()
    form.form_errors.append(message)
    other = _other(request.view_args.get("username") or request.view_args["recipient"])
    return _conversation_page(other, form, status)


def _rate_limited_page(message: str) -> str:
    return _refused(message, 429)[0]


_send_limit = limiter.limit(
    setting("SEND_RATE"),
    key_func=per_user,
    methods=["POST"],
    on_breach=form_error(
        _rate_limited_page,
        lambda n: ngettext(
            "Too many messages. Please try again in %(num)d second.",
            "Too many messages. Please try again in %(num)d seconds.",
            n,
        ),
    ),
)


def _send(other: User):
    """Send the form's message to ``other``: a redirect to the conversation (JSON: 201 and the
    id); refused, the conversation again with the text kept and the reason."""
    form = MessageForm()
    if not form.validate_on_submit():
        if "csrf_token" in form.errors:
            message = _(
                "This page was open too long or its form was not sent from this site. Press Send again."
            )
            if wants_json():
                return json_error(400, message)
            fresh = MessageForm(formdata=None, message=form.message.data)
            fresh.form_errors.append(message)
            return _conversation_page(other, fresh, 400)
        if wants_json():
            return json_error(400, next(iter(form.errors.values()))[0])
        return _conversation_page(other, form, 400)
    try:
        msg = threads.send(current_user, other, form.message.data)
    except threads.SendRefused as refused:
        db.session.rollback()
        return _refused(str(refused), 403)
    db.session.commit()  # publishes to both
    if wants_json():
        return jsonify(id=msg.id), 201
    return redirect(url_for("messages.conversation", username=other.username, _anchor=f"m{msg.id}"))


@bp.route("/messages/<username>", methods=["GET", "POST"])
@login_required
@csrf.exempt  # checked by MessageForm, with a token that lives as long as the login
@_send_limit
def conversation(username: str):
    """The thread with ``username``, newest at the bottom (``?before=<id>`` pages back), and the
    reply box. Opening it marks what they sent read; POST sends a message."""
    other = _other(username)
    if request.method == "POST":
        return _send(other)
    if _before() is None and not _prefetch() and threads.mark_read(current_user, other):
        db.session.commit()
    return _conversation_page(other, MessageForm())


def _prefetch() -> bool:
    """Whether the browser is only fetching ahead (nobody has looked yet)."""
    purpose = request.headers.get("Sec-Purpose") or request.headers.get("Purpose") or ""
    return "prefetch" in purpose or "prerender" in purpose


@bp.route("/send_message/<recipient>", methods=["GET", "POST"])
@login_required
@csrf.exempt
@_send_limit
def send_message(recipient: str):
    """The seed's send form: now the conversation with ``recipient``."""
    user = db.first_or_404(sa.select(User).where(User.username == recipient))
    if user.id == current_user.id:
        flash(_("You cannot send a message to yourself."), "warning")
        return redirect(url_for("main.user", username=recipient))
    if request.method == "POST":
        return _send(user)
    return redirect(url_for("messages.conversation", username=recipient))


@bp.route("/messages/<username>/newer")
@login_required
def newer(username: str):
    """JSON for a live page: the thread's messages after ``?after=<id>``, rendered as the page
    renders them, and the "Seen" state of the last one sent."""
    other = _other(username)
    after = _message_id(request.args.get("after", ""))
    if after is None:
        return json_error(400, _("after must be a message id"))
    limit = current_app.config["MESSAGES_PER_PAGE"]
    messages = threads.newer_than(current_user, other, after, limit)
    html = render_template("messages/_messages.html", messages=messages, other=other)
    return {
        "html": html,
        "last_id": messages[-1].id if messages else after,
        "more": len(messages) == limit,
        "unread": sum(1 for m in messages if m.recipient_id == current_user.id and m.read_at is None),
        "seen": threads.seen(current_user, other),
    }


@bp.route("/messages/<username>/read", methods=["POST"])
@login_required
@csrf.exempt
def read(username: str):
    """The open conversation was looked at: what ``username`` sent is read."""
    check_script_csrf()
    other = _other(username)
    if threads.mark_read(current_user, other):
        db.session.commit()
    return "", 204


@bp.route("/messages/<username>/typing", methods=["POST"])
@login_required
@csrf.exempt
@limiter.limit(setting("TYPING_RATE"), key_func=per_user, error_message=lambda: _("typing too often"))
def typing(username: str):
    """Tell ``username``'s open conversation that the user is typing: ephemeral, never stored."""
    check_script_csrf()
    other = _other(username)
    if threads.may_write(current_user, other):
        tidings.publish(other, "typing", {"from": current_user.username})
    return "", 204


@bp.route("/user/<username>/block", methods=["POST"], endpoint="block", defaults={"on": True})
@bp.route("/user/<username>/unblock", methods=["POST"], endpoint="unblock", defaults={"on": False})
@login_required
def set_block(username: str, on: bool):
    """Block ``username`` (their messages to you are refused), or undo it."""
    other = _other(username)
    threads.set_blocked(current_user, other, on)
    try:
        db.session.commit()
    except IntegrityError:  # the same block, from a double click, committed first
        db.session.rollback()
    if on:
        flash(_("You have blocked %(name)s. They cannot send you messages.", name=other.username), "info")
    else:
        flash(_("You have unblocked %(name)s.", name=other.username), "info")
    return redirect(safe_next(request.form.get("next")) or url_for("main.user", username=other.username))


@bp.route("/messages")
@login_required
def messages():
    """The user's conversations, the latest first, with their unread counts and exports."""
    page = paginate(threads.partners_query(current_user.id), current_app.config["MESSAGES_PER_PAGE"])
    rows = threads.conversations(current_user.id, page.items)
    tasks = db.session.scalars(
        sa.select(Task)
        .where(Task.user_id == current_user.id, Task.name == "export_messages", Task.dismissed.is_(False))
        .order_by(Task.created_at.desc())
        .limit(3)
    ).all()
    return render_template(
        "messages/messages.html",
        title=_("Messages"),
        page=page,
        conversations=rows,
        export_form=ExportForm(),
        tasks=tasks,
    )


@bp.route("/export_messages", methods=["POST"])
@login_required
@limiter.limit(
    setting("EXPORT_RATE"), key_func=per_user, error_message=lambda: _("Too many exports; try again later.")
)
def export_messages():
    """Start a background export of the user's messages (one at a time)."""
    form = ExportForm()
    if not form.validate_on_submit():
        abort(400, _("The form expired. Please try again."))
    try:
        task = launch_task(current_user, "export_messages", "Export of your messages", current_language())
    except TaskAlreadyRunning:
        if wants_json():
            return json_error(409, _("an export of your messages is already running"))
        flash(_("An export of your messages is already running."), "warning")
    except TaskNotStarted:
        if wants_json():
            return json_error(503, _("the export could not be started; please try again shortly"))
        flash(_("The export could not be started. Please try again shortly."), "danger")
    else:
        if wants_json():
            return {"task_id": task.id, "status": task.status}, 202
        flash(_("Your messages are being exported."), "info")
    return redirect(url_for("messages.messages"))


def _own_task(task_id: str) -> Task:
    task = db.session.get(Task, task_id[:36])
    if task is None or task.user_id != current_user.id:
        abort(404)
    return task


@bp.route("/exports/<task_id>/dismiss", methods=["POST"])
@login_required
def dismiss_export(task_id: str):
    """Hide a finished or failed export's card (its file stays until it expires)."""
    task = _own_task(task_id)
    if task.active:
        abort(409, _("That export is still running."))
    task.dismissed = True
    db.session.commit()
    return redirect(url_for("messages.messages"))


@bp.route("/exports/<task_id>")
@login_required
def download_export(task_id: str):
    """The finished export file, for its owner only (anyone else: 404)."""
    task = _own_task(task_id)
    if task.status != "finished":
        abort(404)
    path = export_path(current_app, current_user.id, task.id)
    if not path.is_file():
        abort(404, _("That export is no longer available."))
    return send_file(
        path,
        mimetype="application/json",
        as_attachment=True,
        download_name=f"tidings-messages-{current_user.username}.json",
    )
