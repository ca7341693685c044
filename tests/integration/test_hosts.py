"""Several web hosts behind nginx, on a Redis Cluster, with no sticky sessions.

Each host is a network namespace on a test bridge (harness/servers.py ``Network``): its gunicorn
reaches the cluster, the queue's Redis and PostgreSQL over a real network path, and nginx
(in this namespace) round-robins browsers over the hosts.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from harness import tools
from harness.clients import SSE, WebUser, registered
from harness.servers import (
    LiveServer,
    Network,
    NginxServer,
    PostgresServer,
    RedisCluster,
    RedisServer,
    make_server_env,
    wait_until,
)
from tests.conftest import need

PRESENCE_INTERVAL = 1
PRESENCE_TTL = 2.5 * PRESENCE_INTERVAL  # flask_tidings/presence.py: 2.5 intervals


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two hosts, a 3+3 cluster, a queue Redis, PostgreSQL and nginx; yields them in a dict."""
    need(tools.ROOT, tools.REDIS7, tools.NGINX, tools.OPENSSL)
    tmp = tmp_path_factory.mktemp("hosts")
    tmp.chmod(0o755)
    net = Network().start()
    started = []
    try:
        hosts = [net.host(), net.host()]
        cluster = RedisCluster(tmp / "cluster", host=net.gateway)
        (tmp / "cluster").mkdir()
        started.append(cluster.start())
        (tmp / "queue").mkdir()
        queue = RedisServer(tmp / "queue", host=net.gateway).start()
        started.append(queue)
        (tmp / "pg").mkdir()
        pg = PostgresServer(tmp / "pg", host=net.gateway).start()
        env = make_server_env(tmp, pg.url, cluster.url)
        env.update(REDIS_CLUSTER="1", QUEUE_REDIS_URL=queue.url, WEB_CONCURRENCY="1")
        # Presence written every second: a user is shown offline PRESENCE_TTL after their host dies.
        env.update(PRESENCE_INTERVAL_SECONDS=str(PRESENCE_INTERVAL))
        # nginx reaches the hosts from the bridge's address: only its forwarded headers count.
        env.update(TRUSTED_PROXIES="1", TRUSTED_PROXY_ADDRS=net.gateway)
        webs = [LiveServer(env, tmp / f"web{i}.log", host=h).start() for i, h in enumerate(hosts, 1)]
        started += webs
        nginx = NginxServer(tmp / "nginx", [w.address for w in webs]).start()
        started.append(nginx)
        yield {"webs": webs, "nginx": nginx, "env": env, "pg": pg}
    finally:
        for proc in reversed(started):
            (proc.stop if hasattr(proc, "stop") else proc.kill)()
        if "pg" in locals():
            pg.remove()
        net.stop()


def browser(nginx: NginxServer, name: str) -> WebUser:
    return registered(nginx.url, name, http2=True, verify=False)


def direct_stream(web: LiveServer, user: WebUser) -> SSE:
    """A stream opened on one host, with the browser's cookies (a tab that landed there)."""
    s = SSE.open(web.url, "/stream", {"Cookie": user.cookie_header()}, 10)
    assert s.status == 200
    assert s.next_block().retry
    return s


def test_tabs_on_different_hosts_get_every_event_and_logout_on_one_host_ends_them_all(site):
    web1, web2 = site["webs"]
    alice, bob = browser(site["nginx"], "hostalice"), browser(site["nginx"], "hostbob")
    tabs = [direct_stream(web1, bob), direct_stream(web2, bob)]
    assert alice.send(bob.username, "to both hosts").status_code == 302
    for tab in tabs:
        assert tab.next_event("unread_message_count").json["data"] == 1
        assert tab.next_event("new_message").json["data"]["preview"] == "to both hosts"
        assert tab.next_event("conversation").json["data"]["with"] == alice.username
    assert bob.logout().status_code == 302
    for tab in tabs:
        tab.sock.settimeout(10)
        while (block := tab.next_block()) is not None:
            assert block.event is None, "nothing after logout"
    assert SSE.open(web2.url, "/stream", {"Cookie": bob.cookie_header()}, 10).status == 401


class ProxiedTab:
    """A tab's EventSource through nginx (HTTP/2), reconnecting with Last-Event-ID."""

    def __init__(self, nginx: NginxServer, user: WebUser) -> None:
        self.client = httpx.Client(base_url=nginx.url, http2=True, verify=False, timeout=30)
        self.client.cookies = user.http.cookies
        self.count: int | None = None
        self.last_id: str | None = None
        self.connections: list[list[int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                with self.client.stream("GET", "/stream", headers=headers) as r:
                    if r.status_code != 200:
                        time.sleep(0.5)
                        continue
                    ids: list[int] = []
                    self.connections.append(ids)
                    event = None
                    for line in r.iter_lines():
                        if line.startswith("id: "):
                            self.last_id = line[4:]
                            ids.append(int(self.last_id))
                        elif line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: ") and event == "unread_message_count":
                            self.count = int(line.split('"data": ')[1].split(",")[0])
                        if self.stop.is_set():
                            return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)

    def close(self) -> None:
        self.stop.set()
        self.client.close()


def truth_of(site, username: str) -> int:
    """The messages the database holds for ``username``."""
    engine = sa.create_engine(site["env"]["DATABASE_URL"])
    with engine.connect() as conn:
        truth = conn.execute(
            sa.text(
                'SELECT count(*) FROM message m JOIN "user" u ON u.id = m.recipient_id WHERE u.username = :u'
            ),
            {"u": username},
        ).scalar()
    engine.dispose()
    return truth


class Traffic:
    """A message to ``recipient`` every 100 ms, from ``sender``, until ``stop()``; ``ok`` counts them."""

    def __init__(self, sender: WebUser, recipient: WebUser) -> None:
        self.sender, self.recipient = sender, recipient
        self.ok = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                if self.sender.send(self.recipient.username, f"m{n}").status_code == 302:
                    self.ok += 1
            except httpx.HTTPError:
                pass
            n += 1
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@contextlib.contextmanager
def tabs_under_traffic(site, name: str) -> Iterator[tuple[WebUser, list[ProxiedTab], Traffic]]:
    """A new user's four tabs through nginx (round robin: some on each host), and messages to them."""
    nginx = site["nginx"]
    user, sender = browser(nginx, f"host{name}"), browser(nginx, f"host{name}sender")
    tabs = [ProxiedTab(nginx, user) for _ in range(4)]
    traffic = None
    try:
        wait_until(lambda: all(t.connections for t in tabs), 20, "every tab connected")
        traffic = Traffic(sender, user)
        wait_until(lambda: traffic.ok >= 5, 20, "traffic flowing")
        yield user, tabs, traffic
    finally:
        if traffic is not None:
            traffic.stop()
        for tab in tabs:
            tab.close()


def at_the_truth(site, user: WebUser, tabs: list[ProxiedTab]) -> None:
    """Every tab shows the messages the database holds for ``user``, none twice on a connection."""
    truth = truth_of(site, user.username)
    wait_until(lambda: all(t.count == truth for t in tabs), 30, "every tab at the truth")
    for tab in tabs:
        for ids in tab.connections:
            assert len(ids) == len(set(ids)), "nothing twice on one connection"


def test_a_deploy_of_each_host_in_turn_keeps_every_tab_on_its_one_connection(site):
    with tabs_under_traffic(site, "dave") as (dave, tabs, traffic):
        for web in site["webs"]:
            old = web.live_worker_pids()
            web.proc.send_signal(signal.SIGHUP)
            wait_until(lambda web=web, old=old: not old & web.live_worker_pids(), 30, "a new worker")
        before = traffic.ok
        wait_until(lambda: traffic.ok >= before + 5, 30, "sends after both deploys")
        traffic.stop()
        at_the_truth(site, dave, tabs)
        assert all(len(tab.connections) == 1 for tab in tabs), "a deploy cut a tab"
    for web in site["webs"]:
        assert "carried " in web.log()


def test_a_tab_on_host_1_is_online_on_host_2_and_offline_within_the_ttl_once_host_1_is_killed(
    site, expect_log
):
    expect_log(r"Worker \(pid:\d+\) was sent SIGKILL")
    web1, web2 = site["webs"]
    dave, erin = registered(web2.url, "seendave"), registered(web2.url, "seenerin")

    def online_on_host_2() -> bool:
        page = web2.get(f"/user/{dave.username}", headers={"Cookie": erin.cookie_header()})
        assert page.status_code == 200
        return 'id="presence" data-online="true"' in page.text

    assert not online_on_host_2(), "no tab yet"
    tab = direct_stream(web1, dave)
    wait_until(online_on_host_2, 10, "dave, whose tab is on host 1, online on host 2's pages")
    assert 'data-online="true"' in web2.get("/users", headers={"Cookie": erin.cookie_header()}).text

    killed_at = time.monotonic()
    for worker in web1.workers():
        worker.kill()  # kill -9: no goodbye to Redis, the stream's socket dies with it
    wait_until(lambda: not online_on_host_2(), PRESENCE_TTL + 3, "dave offline")
    assert time.monotonic() - killed_at <= PRESENCE_TTL + PRESENCE_INTERVAL + 1
    # No ghost: host 1's master forks new workers, which serve again and know nothing of dave.
    assert httpx.get(web1.url + "/healthz", timeout=30).status_code == 200
    assert not online_on_host_2()
    tab.close()


def test_a_killed_host_its_browsers_come_back_through_nginx_on_the_other(site, expect_log):
    expect_log(r"connect\(\) failed|upstream prematurely closed|no live upstreams|while reading upstream")
    web1 = site["webs"][0]
    with tabs_under_traffic(site, "carol") as (carol, tabs, traffic):
        for proc in [*web1.children(), web1.proc]:
            proc.kill()  # the host is gone: its master and workers at once
        before = traffic.ok
        wait_until(lambda: traffic.ok >= before + 10, 30, "sends through the other host")
        traffic.stop()
        at_the_truth(site, carol, tabs)
        assert any(len(t.connections) > 1 for t in tabs), "some tabs were on the killed host"
