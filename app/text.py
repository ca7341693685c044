"""Message bodies on a page: escaped, line breaks kept (by CSS), web addresses made links."""

from __future__ import annotations

from linkify_it import LinkifyIt
from markupsafe import Markup, escape

# Only addresses written with http:// or https://: no guessing at "example.com", no mailto:,
# no protocol-relative "//host" (whatever the page's scheme, the writer did not say).
_FINDER = LinkifyIt().set({"fuzzy_link": False, "fuzzy_email": False, "fuzzy_ip": False})
_SCHEMES = ("http:", "https:")
LINK_REL = "noopener nofollow ugc"
PREVIEW_CHARS = 60


def preview(body: str, chars: int = PREVIEW_CHARS) -> str:
    """The first words of a message on one line, for toasts, the conversation list and pushes."""
    flat = " ".join(body.split())
    if len(flat) <= chars:
        return flat
    return flat[:chars].rsplit(" ", 1)[0] + "…"


def linkify(body: str) -> Markup:
    """``body`` as HTML: every character escaped; each http(s) address an ``<a>`` that opens in
    a new tab and passes no referrer authority (``rel="noopener nofollow ugc"``)."""
    parts: list[str] = []
    done = 0
    for match in _FINDER.match(body) or []:
        if match.schema.lower() not in _SCHEMES:
            continue
        parts.append(escape(body[done : match.index]))
        parts.append(
            Markup('<a href="{}" rel="{}" target="_blank">{}</a>').format(match.url, LINK_REL, match.text)
        )
        done = match.last_index
    parts.append(escape(body[done:]))
    return Markup("").join(parts)
