"""Pagination from ``?page=N`` that answers nonsense with a 404, never a database error."""

from __future__ import annotations

from flask import abort, request
from flask_babel import gettext
from flask_sqlalchemy.pagination import Pagination
from sqlalchemy import Select

from app.extensions import db

MAX_PAGE = 10**6


def paginate(query: Select, per_page: int) -> Pagination:
    """One page of ``query``; a page that is not a number from 1 to MAX_PAGE is 404."""
    raw = request.args.get("page", "1")
    # isdigit() alone admits "²" and "①", which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or not 1 <= int(raw) <= MAX_PAGE:
        abort(404, gettext("There is no such page."))
    return db.paginate(query, page=int(raw), per_page=per_page, error_out=True)
