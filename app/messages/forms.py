"""Message forms."""

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length

from app.models import MESSAGE_MAX_CHARS
from app.security import login_lifetime_seconds


def _tidy(value):
    """Trimmed, with the browser's CRLF line breaks counted as one character, as typed."""
    return value.replace("\r\n", "\n").strip() if isinstance(value, str) else value


class MessageForm(FlaskForm):
    """Write a private message (1–2,000 characters once trimmed; line breaks kept)."""

    class Meta:
        @property
        def csrf_time_limit(self) -> int:
            return login_lifetime_seconds()

    message = TextAreaField(
        _l("Message"),
        filters=[_tidy],
        validators=[
            DataRequired(message=_l("Write something first.")),
            Length(min=1, max=MESSAGE_MAX_CHARS, message=_l("At most 2,000 characters.")),
        ],
    )
    submit = SubmitField(_l("Send"))


class ExportForm(FlaskForm):
    """Start an export (a form only for its CSRF token)."""

    submit = SubmitField(_l("Export my messages"))
