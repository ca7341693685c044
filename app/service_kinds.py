"""Kinds for services, declared without code: ``NOTIFICATION_KINDS_FILE`` names a JSON file.

    {"build_finished": {"per": "build", "title": "Build {build} finished",
                        "body": "{result} in {seconds} s", "link": "/builds/{build}"}}

Each entry becomes a declared kind (``per``: the data field that tells its notifications apart;
absent, a new one replaces the last). The page shows one as a toast: ``title`` and ``body``
with ``{field}`` filled from the data (as text, never HTML) and, if ``link`` is given and
comes out as a same-origin path or an https URL, a link there (app/static/js/site.js).
A file that says anything else stops the app at start with the reason.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import asdict, dataclass
from pathlib import Path

from flask import Flask

from flask_tidings import Kind, Tidings

FIELDS = {"per", "keep", "title", "body", "link"}
# With ``per``: how many of a kind one user's store keeps (the newest), unless the file says.
KEEP = 20
KIND_NAME = r"[A-Za-z0-9_.:-]{1,64}"  # as the publish API takes it
PENDING_SHOWN = 5  # the newest stored service notifications a page shows on load
SHOWN_AS = "a toast from a service's template (NOTIFICATION_KINDS_FILE)"


class KindsFileError(ValueError):
    """The kinds file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class ServiceKind:
    """How one service kind is kept (``per``, ``keep``) and shown (``title``, ``body``, ``link``)."""

    name: str
    title: str
    body: str = ""
    link: str | None = None
    per: str | None = None
    keep: int = KEEP

    def shown(self) -> dict:
        """What the page needs to show it."""
        return {k: v for k, v in asdict(self).items() if k in ("title", "body", "link") and v is not None}


def _template(name: str, field: str, value: object) -> str:
    if not isinstance(value, str) or len(value) > 500:
        raise KindsFileError(f"{name}.{field} must be a string of at most 500 characters")
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise KindsFileError(f"{name}.{field}: {exc}") from None
    for _text, field_name, spec, conversion in parsed:
        if field_name is not None and (not field_name.isidentifier() or spec or conversion):
            raise KindsFileError(f"{name}.{field}: {{{field_name}}} must name one data field, nothing more")
    return value


def parse(raw: str, source: str = "the kinds file") -> list[ServiceKind]:
    """The kinds ``raw`` (the file's text) declares; KindsFileError says what is wrong."""
    try:
        declared = json.loads(raw)
    except ValueError as exc:
        raise KindsFileError(f"{source} is not JSON: {exc}") from None
    if not isinstance(declared, dict):
        raise KindsFileError(f"{source} must be a JSON object mapping each kind's name to its settings")
    kinds = []
    for name, settings in declared.items():
        if not re.fullmatch(KIND_NAME, name):
            raise KindsFileError(f"{name!r}: a kind's name is 1 to 64 letters, digits, '_', '.', ':' or '-'")
        if not isinstance(settings, dict) or "title" not in settings:
            raise KindsFileError(f"{name}: an object with at least a title")
        unknown = set(settings) - FIELDS
        if unknown:
            raise KindsFileError(f"{name}: unknown setting(s) {sorted(unknown)}; allowed: {sorted(FIELDS)}")
        link = settings.get("link")
        if link is not None:
            _template(name, "link", link)
            if not (link.startswith("/") and not link.startswith("//") or link.startswith("https://")):
                raise KindsFileError(f"{name}.link must be a path on this site (/…) or an https:// URL")
        per = settings.get("per")
        if per is not None and (not isinstance(per, str) or not per.isidentifier()):
            raise KindsFileError(f"{name}.per must name a data field")
        keep = settings.get("keep", KEEP)
        if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= 1000:
            raise KindsFileError(f"{name}.keep must be a whole number from 1 to 1000")
        kinds.append(
            ServiceKind(
                name=name,
                title=_template(name, "title", settings["title"]),
                body=_template(name, "body", settings.get("body", "")),
                link=link,
                per=per,
                keep=keep,
            )
        )
    return kinds


def for_page(app: Flask, user_id: int) -> dict:
    """What the page needs: how each service kind is shown, and the user's stored service
    notifications (each shown until dismissed, so a tab opened later still shows it)."""
    import sqlalchemy as sa

    from app.extensions import db
    from app.models import Notification

    kinds = app.extensions.get("service_kinds", {})
    pending = []
    if kinds:
        rows = db.session.scalars(
            sa.select(Notification)
            .where(Notification.user_id == user_id, Notification.name.in_(list(kinds)))
            .order_by(Notification.id.desc())
            .limit(PENDING_SHOWN)
        )
        pending = [row.to_dict() for row in rows]
    return {"kinds": {name: kind.shown() for name, kind in kinds.items()}, "pending": pending[::-1]}


def init_app(app: Flask, tidings: Tidings) -> None:
    """Declare the file's kinds (none without a file); ``app.extensions["service_kinds"]``."""
    path = app.config.get("NOTIFICATION_KINDS_FILE")
    kinds: dict[str, ServiceKind] = {}
    if path:
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise KindsFileError(f"NOTIFICATION_KINDS_FILE {path}: {exc.strerror}") from None
        for kind in parse(raw, path):
            if kind.name in tidings.kinds and tidings.kinds[kind.name].shown_as != SHOWN_AS:
                raise KindsFileError(f"{kind.name} is one of the site's own kinds")
            try:
                tidings.kinds.add(Kind(kind.name, SHOWN_AS, per=kind.per, keep=kind.keep))
            except ValueError as exc:
                raise KindsFileError(f"{kind.name}: {exc}") from None
            kinds[kind.name] = kind
    app.extensions["service_kinds"] = kinds
