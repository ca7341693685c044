"""Account forms."""

from __future__ import annotations

import sqlalchemy as sa
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Email, EqualTo, Length, Regexp, ValidationError

from app.extensions import db
from app.models import User

USERNAME_RULE = r"^[A-Za-z0-9_.-]{3,64}$"


def _strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


class RegistrationForm(FlaskForm):
    """Create an account."""

    username = StringField(
        "Username",
        filters=[_strip],
        validators=[
            DataRequired(),
            Regexp(USERNAME_RULE, message="3 to 64 letters, digits, '_', '.' or '-'."),
        ],
    )
    email = StringField(
        "Email",
        filters=[_strip, lambda v: v.lower() if isinstance(v, str) else v],
        validators=[DataRequired(), Length(max=254), Email(check_deliverability=False)],
    )
    password = PasswordField(
        "Password", validators=[DataRequired(), Length(min=8, max=256, message="At least 8 characters.")]
    )
    password2 = PasswordField(
        "Repeat password", validators=[DataRequired(), EqualTo("password", message="Passwords must match.")]
    )
    submit = SubmitField("Register")

    def validate_username(self, field: StringField) -> None:
        """Usernames are unique, whatever their case."""
        taken = db.session.scalar(
            sa.select(User.id).where(sa.func.lower(User.username) == field.data.lower())
        )
        if taken is not None:
            raise ValidationError("That username is taken.")

    def validate_email(self, field: StringField) -> None:
        """One account per email address."""
        if db.session.scalar(sa.select(User.id).where(User.email == field.data)) is not None:
            raise ValidationError("That email address is already registered.")


class LoginForm(FlaskForm):
    """Log in."""

    username = StringField("Username", filters=[_strip], validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    remember_me = BooleanField("Remember me")
    submit = SubmitField("Log in")


class LogoutForm(FlaskForm):
    """Log out (a POST with a CSRF token: no other site can log you out)."""

    submit = SubmitField("Log out")
