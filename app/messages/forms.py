"""Message forms."""

from flask_wtf import FlaskForm
from wtforms import SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length


class MessageForm(FlaskForm):
    """Write a private message (1–140 characters once trimmed)."""

    message = TextAreaField(
        "Message",
        filters=[lambda v: v.strip() if isinstance(v, str) else v],
        validators=[
            DataRequired(message="Write something first."),
            Length(min=1, max=140, message="At most 140 characters."),
        ],
    )
    submit = SubmitField("Send")


class ExportForm(FlaskForm):
    """Start an export (a form only for its CSRF token)."""

    submit = SubmitField("Export my messages")
