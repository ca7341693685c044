"""Forwarded headers are believed only from the proxy's addresses (TRUSTED_PROXY_ADDRS)."""

from __future__ import annotations

import pytest
from flask import request

from app.config import proxy_networks, refuse_exposed_proxy_trust
from tests.conftest import build_app, dispose


@pytest.mark.parametrize(
    ("binds", "environ", "refused"),
    [
        (["0.0.0.0:8000"], {"TRUSTED_PROXIES": "1"}, True),
        (["[::]:8000"], {"TRUSTED_PROXIES": "1"}, True),
        (["10.0.0.4:8000", "127.0.0.1:8001"], {"TRUSTED_PROXIES": "1"}, True),
        (["0.0.0.0:8000"], {"TRUSTED_PROXIES": "1", "TRUSTED_PROXY_ADDRS": "10.0.0.5"}, False),
        (["127.0.0.1:8000"], {"TRUSTED_PROXIES": "1"}, False),
        (["[::1]:8000", "localhost:8001"], {"TRUSTED_PROXIES": "1"}, False),
        (["unix:/run/tidings.sock"], {"TRUSTED_PROXIES": "1"}, False),
        (["0.0.0.0:8000"], {"TRUSTED_PROXIES": "0"}, False),
        (["0.0.0.0:8000"], {}, False),
    ],
)
def test_gunicorn_refuses_to_believe_forwarded_headers_on_an_exposed_bind_without_an_allow_list(
    binds, environ, refused
):
    refusal = refuse_exposed_proxy_trust(binds, environ)
    assert bool(refusal) is refused
    if refused:
        assert "TRUSTED_PROXY_ADDRS" in refusal


def test_the_allow_list_takes_addresses_and_networks_and_refuses_nonsense():
    assert [str(n) for n in proxy_networks("10.0.0.5, 10.1.0.0/16,::1")] == [
        "10.0.0.5/32",
        "10.1.0.0/16",
        "::1/128",
    ]
    with pytest.raises(RuntimeError, match="TRUSTED_PROXY_ADDRS"):
        proxy_networks("10.0.0.300")


@pytest.mark.parametrize(
    ("peer", "seen"),
    [
        ("127.0.0.1", "198.51.100.7"),  # the proxy (loopback, the default allow-list)
        ("::ffff:127.0.0.1", "198.51.100.7"),
        ("203.0.113.5", "203.0.113.5"),  # anyone else: the header is ignored
    ],
)
def test_the_client_address_comes_from_the_header_only_when_the_peer_is_the_proxy(
    config, fake_redis, peer, seen
):
    config.update(TRUSTED_PROXIES=1, TRUSTED_PROXY_ADDRS=proxy_networks("127.0.0.1,::1"))
    app = build_app(config, fake_redis)
    app.add_url_rule("/whoami", "whoami", lambda: request.remote_addr)
    client = app.test_client()
    r = client.get("/whoami", environ_base={"REMOTE_ADDR": peer}, headers={"X-Forwarded-For": "198.51.100.7"})
    assert r.get_data(as_text=True) == seen
    dispose(app)
