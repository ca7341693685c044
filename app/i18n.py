"""Languages: English and Simplified Chinese through Flask-Babel, and the texts the page script shows.

Who reads which language: a logged-in user's saved choice (their profile, or the switcher at the
foot of every page), then the ``lang`` cookie the switcher sets, then the browser's
``Accept-Language``, then English. The catalogs are ``app/translations/<lang>/LC_MESSAGES``:
the ``.po`` files are edited, the ``.mo`` files compiled from them (``make translations``) and
committed; ``tests/unit/test_i18n.py`` fails when one is missing a translation or is stale.

Times are not formatted here: every time on a page is a ``<time datetime>`` in UTC that the
page script shows in the browser's zone (``app/static/js/i18n.js``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Flask, has_request_context, request
from flask_babel import Babel, force_locale, get_locale, get_translations, gettext
from flask_login import current_user
from markupsafe import Markup

LANGUAGES = {"en": "English", "zh_Hans": "简体中文"}
DEFAULT = "en"
COOKIE = "lang"
COOKIE_SECONDS = 365 * 86400
# The ``lang`` attribute of <html>, and the tag the page script gives Intl, per language.
HTML_LANG = {"en": "en", "zh_Hans": "zh-Hans"}

babel = Babel()


def language_of_tag(tag: str) -> str | None:
    """The language we have for a BCP 47 tag (``zh-CN``, ``zh-Hant-TW``, ``en-US``), if any:
    every Chinese reader gets Simplified Chinese, the one Chinese catalog there is."""
    primary = tag.replace("_", "-").split("-", 1)[0].lower()
    return {"en": "en", "zh": "zh_Hans"}.get(primary)


def from_browser() -> str:
    """The first language of the request's ``Accept-Language`` (in its order of preference)
    that we have, else English. Whatever the header says, this never fails."""
    for tag, quality in request.accept_languages:
        if quality > 0 and (language := language_of_tag(tag)) is not None:
            return language
    return DEFAULT


def select_locale() -> str:
    """Flask-Babel's locale selector: the saved choice, the cookie, the browser, English."""
    if not has_request_context():
        return DEFAULT
    # /stream and /notifications never load the user (app/notifications.py): their few words
    # (a refusal) follow the cookie and the browser.
    if request.blueprint == "tidings":
        saved = None
    else:
        saved = getattr(current_user, "language", None) if current_user.is_authenticated else None
    if saved in LANGUAGES:
        return saved
    cookie = request.cookies.get(COOKIE)
    if cookie in LANGUAGES:
        return cookie
    return from_browser()


def current_language() -> str:
    """The request's language code (``en`` or ``zh_Hans``)."""
    locale = get_locale()
    return "zh_Hans" if locale is not None and locale.language == "zh" else DEFAULT


def in_language(language: str | None):
    """Render in ``language`` (a user's saved one; English if unset): for what is read outside a
    page, later (the export file)."""
    return force_locale(language if language in LANGUAGES else DEFAULT)


def ngettext_raw(singular: str, plural: str) -> dict[str, str]:
    """A plural message's forms in this language for the page script, which picks one with
    ``Intl.PluralRules`` (``one``, ``other``) and fills the ``%(name)s`` placeholders itself.
    (``make translations`` extracts it as it does ``ngettext``.)"""
    translations = get_translations()
    return {
        "one": translations.ungettext(singular, plural, 1),
        "other": translations.ungettext(singular, plural, 2),
    }


def page_texts() -> dict[str, Any]:
    """Every sentence the page scripts write, in the request's language (the page carries them
    as JSON; live events carry only data, so a toast reads in the page's language)."""
    return {
        "lang": HTML_LANG[current_language()],
        "message_from": gettext("Message from %(name)s"),
        "new_messages": ngettext_raw("%(name)s: %(num)d new message", "%(name)s: %(num)d new messages"),
        "announcement": gettext("Announcement"),
        "close": gettext("Close"),
        "you_prefix": gettext("You: %(text)s"),
        "is_typing": gettext("%(name)s is typing…"),
        "not_sent": gettext(
            "Your message was not sent. Reload the page (you may need to log in again); copy your text first."
        ),
        "unreachable": gettext(
            "Your message was not sent: the site could not be reached. It is still here; press Send again."
        ),
        "unread": ngettext_raw("%(num)d unread message", "%(num)d unread messages"),
        "unread_short": gettext("unread"),
        "preparing": gettext("Preparing… %(num)d%%"),
        "ready": gettext("Ready"),
        "download": gettext("Download"),
        "failed": gettext("Failed"),
        "retry": gettext("Retry"),
    }


def when(moment: datetime, style: str = "datetime") -> Markup:
    """A time on a page: ``<time datetime>`` in UTC, shown without script as UTC (and saying so),
    and by the page script in the reader's zone and language. ``style``: ``datetime``, ``date``,
    or ``relative`` ("3 minutes ago", the full time on hover; the date after a week)."""
    text = moment.strftime("%Y-%m-%d" if style == "date" else "%Y-%m-%d %H:%M")
    return Markup('<time datetime="{}" data-style="{}">{} {}</time>').format(
        moment.isoformat(), style, text, gettext("UTC")
    )


def init_app(app: Flask) -> None:
    """Flask-Babel with our selector; the catalogs live in ``app/translations``."""
    babel.init_app(app, locale_selector=select_locale, default_translation_directories="translations")

    app.add_template_global(when)

    @app.context_processor
    def languages() -> dict[str, Any]:
        language = current_language()
        return {
            "languages": LANGUAGES,
            "current_language": language,
            "html_lang": HTML_LANG[language],
            "page_texts": page_texts,
        }
