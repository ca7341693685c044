"""Message bodies on a page: whatever is written comes back as text, and links are only http(s)."""

import html
import re

from hypothesis import given
from hypothesis import strategies as st

from app.text import linkify, preview

TAG = re.compile(r"<a href=\"([^\"]*)\" rel=\"noopener nofollow ugc\" target=\"_blank\">|</a>")
PIECES = st.sampled_from(
    [
        "https://example.com/a?b=1&c=2",
        "http://x.test/<b>",
        "javascript:alert(1)",
        "//evil.test",
        " ",
        "\n",
        "<script>",
        "\"'",
        "&amp;",
        "mailto:a@b.test",
        ").",
        "www.example.com",
        "https://",
        "é",
    ]
)


@given(st.lists(st.one_of(PIECES, st.text(max_size=20)), max_size=12).map("".join))
def test_any_body_renders_as_its_own_text_with_only_web_links(body):
    rendered = str(linkify(body))
    hrefs = [h for h in TAG.findall(rendered) if h]
    assert all(html.unescape(h).lower().startswith(("http://", "https://")) for h in hrefs)
    # Take the links away and unescape: what was written, character for character.
    assert html.unescape(TAG.sub("", rendered)) == body
    assert "<" not in TAG.sub("", rendered), "no markup but the links"


def test_previews_are_one_line_and_cut_at_a_word():
    assert preview("a\nb\tc") == "a b c"
    assert preview("word " * 30) == ("word " * 12).strip() + "…"
