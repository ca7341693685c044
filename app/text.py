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
# Bidirectional embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069): in someone
# else's text they can make a link or a name read as another ("moc.elgoog" shown reversed).
# Removed wherever a person's text is shown; the marks (U+200E, U+200F) stay, they reorder nothing.
_BIDI_CONTROLS = dict.fromkeys([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])


def plain(text: str) -> str:
    """``text`` without bidirectional embeddings, overrides and isolates."""
    return text.translate(_BIDI_CONTROLS)


def preview(body: str, chars: int = PREVIEW_CHARS) -> str:
    """The first words of a message on one line, for toasts, the conversation list and pushes."""
    flat = " ".join(plain(body).split())
    if len(flat) <= chars:
        return flat
    return flat[:chars].rsplit(" ", 1)[0] + "…"


def linkify(body: str) -> Markup:
    """``body`` as HTML: every character escaped; each http(s) address an ``<a>`` that opens in
    a new tab and passes no referrer authority (``rel="noopener nofollow ugc"``)."""
    body = plain(body)
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
