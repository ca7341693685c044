"""Mail (Flask-Mail): through the SMTP server ``MAIL_SERVER`` names, or, with none named (``make
run``), shown in the terminal of the process that sends it (the background worker)."""

from __future__ import annotations

import logging

from flask import current_app
from flask_mail import Mail, Message

log = logging.getLogger(__name__)

mail = Mail()


def send(to: str, subject: str, body: str) -> None:
    """Send a plain-text mail to ``to`` (raises on an SMTP failure, so the job can be retried)."""
    if not current_app.config.get("MAIL_SERVER") and current_app.config.get("APP_ENV") == "production":
        # Never into a production log: a reset link there would open the account to its readers.
        log.error("MAIL_SERVER is not set: a mail to %s (%s) was not sent", to, subject)
        return
    if not current_app.config.get("MAIL_SERVER"):
        banner = f"--- mail to {to} (no MAIL_SERVER: shown here, not sent) ---"
        print(f"\n{banner}\nSubject: {subject}\n\n{body}\n---", flush=True)
        return
    mail.send(Message(subject=subject, recipients=[to], body=body))
