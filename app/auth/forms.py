"""Account forms."""

from __future__ import annotations

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Email, EqualTo, Length, Regexp, ValidationError
from zxcvbn import zxcvbn

from app.extensions import db
from app.models import User

USERNAME_RULE = r"^[A-Za-z0-9_.-]{3,64}$"
PASSWORD_LENGTH = Length(min=8, max=256, message=_l("At least 8 characters."))
REQUIRED = DataRequired(message=_l("This field is required."))
EMAIL = Email(check_deliverability=False, message=_l("That is not an email address."))
SAME_PASSWORD = EqualTo("password", message=_l("Passwords must match."))


def not_common(form: FlaskForm, field: PasswordField) -> None:
    """Refuse the passwords on the well-known lists of common and breached ones (NIST SP
    800-63B), also l33t-spelled or reversed: zxcvbn's list of 30,000, no network call."""
    password = field.data or ""
    if not password or len(password) > 72:  # zxcvbn's limit; no listed password is that long
        return
    for match in zxcvbn(password)["sequence"]:
        whole = match["i"] == 0 and match["j"] == len(password) - 1
        if whole and match.get("pattern") == "dictionary" and match.get("dictionary_name") == "passwords":
            raise ValidationError(_l("This is one of the most common passwords. Please choose another."))


def _strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


class RegistrationForm(FlaskForm):
    """Create an account."""

    username = StringField(
        _l("Username"),
        filters=[_strip],
        validators=[
            REQUIRED,
            Regexp(USERNAME_RULE, message=_l("3 to 64 letters, digits, '_', '.' or '-'.")),
        ],
    )
    email = StringField(
        _l("Email"),
        filters=[_strip, lambda v: v.lower() if isinstance(v, str) else v],
        validators=[REQUIRED, Length(max=254, message=_l("At most 254 characters.")), EMAIL],
    )
    password = PasswordField(_l("Password"), validators=[REQUIRED, PASSWORD_LENGTH, not_common])
    password2 = PasswordField(_l("Repeat password"), validators=[REQUIRED, SAME_PASSWORD])
    submit = SubmitField(_l("Register"))

    def validate_username(self, field: StringField) -> None:
        """Usernames are unique, whatever their case."""
        taken = db.session.scalar(
            sa.select(User.id).where(sa.func.lower(User.username) == field.data.lower())
        )
        if taken is not None:
            raise ValidationError(_l("That username is taken."))

    def validate_email(self, field: StringField) -> None:
        """One account per email address."""
        if db.session.scalar(sa.select(User.id).where(User.email == field.data)) is not None:
            raise ValidationError(_l("That email address is already registered."))


class LoginForm(FlaskForm):
    """Log in."""

    username = StringField(
        _l("Username"),
        filters=[_strip],
        validators=[REQUIRED, Length(max=64, message=_l("At most 64 characters."))],
    )
    password = PasswordField(
        _l("Password"), validators=[REQUIRED, Length(max=256, message=_l("At most 256 characters."))]
    )
    remember_me = BooleanField(_l("Remember me"))
    submit = SubmitField(_l("Log in"))


class LogoutForm(FlaskForm):
    """Log out (a POST with a CSRF token: no other site can log you out)."""

    submit = SubmitField(_l("Log out"))


class ResetRequestForm(FlaskForm):
    """Ask for a password-reset link by mail."""

    email = StringField(
        _l("Email"),
        filters=[_strip, lambda v: v.lower() if isinstance(v, str) else v],
        validators=[REQUIRED, Length(max=254, message=_l("At most 254 characters.")), EMAIL],
    )
    submit = SubmitField(_l("Send me a link"))


class ResetPasswordForm(FlaskForm):
    """Choose a new password (from a reset link)."""

    password = PasswordField(_l("New password"), validators=[REQUIRED, PASSWORD_LENGTH, not_common])
    password2 = PasswordField(_l("Repeat password"), validators=[REQUIRED, SAME_PASSWORD])
    submit = SubmitField(_l("Set my password"))
