"""Languages: the catalog is complete and compiled, the reader's language is chosen in the right
order, and hostile headers never fail a request."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po
from hypothesis import given

from app.extensions import db
from app.i18n import LANGUAGES, language_of_tag
from app.models import User
from tests.unit.test_fuzz_routes import FUZZ, hostile

ROOT = Path(__file__).resolve().parents[2]
CATALOGS = ROOT / "app" / "translations"
KEYWORDS = {
    "_": None,
    "gettext": None,
    "ngettext": (1, 2),
    "_l": None,
    "lazy_gettext": None,
    "ngettext_raw": (1, 2),
}
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]")


def extracted() -> set:
    """Every translatable text in the code and templates, as `make translations` finds it."""
    method_map = [
        ("app/**.py", "python"),
        ("workers/**.py", "python"),
        ("app/templates/**.html", "jinja2"),
    ]
    found = set()
    for _filename, _lineno, message, _comments, _context in extract_from_dir(
        str(ROOT), method_map, keywords=KEYWORDS
    ):
        found.add(message)
    return found


def test_every_text_is_translated_into_simplified_chinese_and_none_is_fuzzy():
    catalog = read_po((CATALOGS / "zh_Hans" / "LC_MESSAGES" / "messages.po").open("rb"), locale="zh_Hans")
    by_id = {_key(m.id): m for m in catalog if m.id}
    missing = [m for m in extracted() if m not in by_id]
    assert not missing, f"not in the zh_Hans catalog (run `make translations`, then translate): {missing}"
    untranslated = [
        k for k, m in by_id.items() if not all((m.string,) if isinstance(m.string, str) else m.string)
    ]
    assert not untranslated, f"untranslated: {untranslated}"
    fuzzy = [k for k, m in by_id.items() if m.fuzzy]
    assert not fuzzy, f"fuzzy (check, then drop the flag): {fuzzy}"


def test_placeholders_survive_translation():
    catalog = read_po((CATALOGS / "zh_Hans" / "LC_MESSAGES" / "messages.po").open("rb"), locale="zh_Hans")
    for m in catalog:
        if not m.id:
            continue
        source = m.id if isinstance(m.id, str) else m.id[1]
        target = m.string if isinstance(m.string, str) else m.string[0]
        assert sorted(PLACEHOLDER.findall(source)) == sorted(PLACEHOLDER.findall(target)), m.id


def _key(text) -> str | tuple:
    return text if isinstance(text, str) else tuple(text)


def test_the_compiled_catalog_is_the_po_file():
    """The committed .mo holds what the committed .po says (none is stale)."""
    for language in LANGUAGES:
        if language == "en":
            continue  # English is the source text
        po = CATALOGS / language / "LC_MESSAGES" / "messages.po"
        fresh = io.BytesIO()
        write_mo(fresh, read_po(po.open("rb"), locale=language))
        fresh.seek(0)
        expected = {_key(m.id): _key(m.string) for m in read_mo(fresh) if m.id}
        committed = {_key(m.id): _key(m.string) for m in read_mo(po.with_suffix(".mo").open("rb")) if m.id}
        assert committed == expected, f"{po.with_suffix('.mo')} is stale: run `make translations`"


# -- choosing the language ---------------------------------------------------------------------


def html_lang(response) -> str:
    return re.search(r'<html lang="([^"]+)">', response.get_data(as_text=True)).group(1)


@pytest.mark.parametrize(
    "header, lang",
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh-Hans"),
        ("zh-TW", "zh-Hans"),
        ("en-US,zh-CN;q=0.9", "en"),
        ("fr-FR,zh;q=0.5", "zh-Hans"),
        ("fr", "en"),
        ("", "en"),
        ("zh;q=0, en;q=0.1", "en"),
    ],
)
def test_the_browser_language_is_followed_in_its_order(client, header, lang):
    assert html_lang(client.get("/", headers={"Accept-Language": header})) == lang


@FUZZ
@given(hostile)
def test_any_accept_language_header_answers_a_page(app, header):
    client = app.test_client()
    try:
        r = client.get("/auth/login", headers={"Accept-Language": header})
    except ValueError:
        return  # werkzeug's test client refuses the header itself (a newline): no request was made
    assert r.status_code == 200 and html_lang(r) in ("en", "zh-Hans")


def test_language_of_tag():
    assert [language_of_tag(t) for t in ("zh-Hans-CN", "ZH_cn", "en-GB", "de", "")] == [
        "zh_Hans",
        "zh_Hans",
        "en",
        None,
        None,
    ]


def test_the_switcher_sets_a_cookie_for_a_visitor(client):
    r = client.post("/language", data={"language": "zh_Hans", "next": "/auth/login"})
    assert r.status_code == 302 and r.headers["Location"] == "/auth/login"
    assert "lang=zh_Hans" in r.headers["Set-Cookie"] and "HttpOnly" in r.headers["Set-Cookie"]
    page = client.get("/auth/login", headers={"Accept-Language": "en"})
    assert html_lang(page) == "zh-Hans" and "登录" in page.get_data(as_text=True)
    assert client.post("/language", data={"language": "klingon"}).status_code == 400
    r = client.post("/language", data={"language": "", "next": "//evil.test"})
    assert r.headers["Location"] == "/", "no open redirect"
    assert html_lang(client.get("/", headers={"Accept-Language": "en"})) == "en", "back to the browser's"


def test_a_saved_choice_wins_on_every_device(app, auth, client):
    auth.create("alice")
    auth.login("alice")
    client.post("/language", data={"language": "en"})
    with app.app_context():
        assert db.session.scalar(db.select(User.language).where(User.username == "alice")) == "en"
    phone = app.test_client()  # another device: no cookie, a Chinese browser
    type(auth)(app, phone).login("alice")
    assert html_lang(phone.get("/", headers={"Accept-Language": "zh-CN"})) == "en"
    client.post("/language", data={"language": ""})  # the profile's "your browser's language"
    assert html_lang(phone.get("/", headers={"Accept-Language": "zh-CN"})) == "zh-Hans"


def test_the_profile_offers_the_setting(app, auth, client):
    auth.create("alice")
    auth.login("alice")
    page = client.get("/user/alice").get_data(as_text=True)
    assert 'id="language_setting"' in page and '<option value="" selected>' in page
    client.post("/language", data={"language": "zh_Hans"})
    page = client.get("/user/alice").get_data(as_text=True)
    assert '<option value="zh_Hans" selected>简体中文</option>' in page and "语言" in page


# -- words in Chinese, data in events -------------------------------------------------------------


ZH = {"Accept-Language": "zh-CN"}


def test_forms_flashes_errors_and_plurals_speak_chinese(client, auth):
    r = client.post("/auth/register", data={"username": "x"}, headers=ZH)
    page = r.get_data(as_text=True)
    assert "此项为必填项。" in page and "3 到 64 个字母" in page
    assert "未找到" in client.get("/nowhere", headers=ZH).get_data(as_text=True)
    auth.create("alice")
    auth.create("bob")
    auth.login("alice")
    client.post("/messages/bob", data={"message": "你好"})
    auth.logout()
    auth.login("bob")
    home = client.get("/", headers=ZH).get_data(as_text=True)
    assert "1 条未读消息" in home and "你好，bob！" in home


def page_texts(page: str) -> dict:
    return json.loads(
        re.search(r'<script type="application/json" id="page_texts">(.*?)</script>', page).group(1)
    )


def test_the_page_carries_its_script_texts_in_its_language(client, auth):
    auth.create("alice")
    auth.login("alice")
    page = client.get("/", headers=ZH).get_data(as_text=True)
    texts = page_texts(page)
    assert texts["lang"] == "zh-Hans" and texts["message_from"] == "%(name)s 发来消息"
    one_form = "%(name)s：%(num)d 条新消息"
    assert texts["new_messages"] == {"one": one_form, "other": one_form}
    english = page_texts(client.get("/").get_data(as_text=True))
    assert english["new_messages"]["one"] == "%(name)s: %(num)d new message"


def test_times_are_utc_time_elements_that_say_so(client, auth):
    auth.create("alice")
    auth.login("alice")
    page = client.get("/user/alice").get_data(as_text=True)
    times = re.findall(r'<time datetime="([^"]+)" data-style="(\w+)">([^<]+)</time>', page)
    assert times and all(iso.endswith("+00:00") and text.endswith(" UTC") for iso, _style, text in times)


def test_the_reset_mail_uses_the_saved_language(app, auth, capsys):
    from workers.jobs import send_password_reset

    auth.create("alice")
    with app.app_context():
        db.session.execute(db.update(User).values(language="zh_Hans"))
        db.session.commit()
    with app.app_context():
        send_password_reset("alice@example.com", "http://x.test", "en")
    mail = capsys.readouterr().out
    assert "重置你的 Tidings 密码" in mail and "该链接只能使用一次，有效期 30 分钟" in mail


def test_the_reset_mail_falls_back_to_the_asking_page_language(app, auth, capsys):
    from workers.jobs import send_password_reset

    auth.create("alice")
    with app.app_context():
        send_password_reset("alice@example.com", "http://x.test", "zh_Hans")
        assert "重置你的 Tidings 密码" in capsys.readouterr().out
        send_password_reset("alice@example.com", "http://x.test")
        assert "Reset your Tidings password" in capsys.readouterr().out
