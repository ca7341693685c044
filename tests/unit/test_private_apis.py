"""The fences around libraries' private APIs (docs/design.md, "Private APIs"): each test fails
loudly when an upgrade changes what Flask-Tidings or the site relies on, rather than letting a
stream or a login break silently."""

from __future__ import annotations

import _socket
import hashlib
import inspect
import socket
import threading

import gevent.socket
import redis
from flask import Flask, session
from flask_login import LoginManager, UserMixin, login_user
from gunicorn.workers import base_async, ggevent
from redis.cluster import NodesManager, RedisCluster

from app.login_session import FLASK_LOGIN_ID_KEY, draw_without_user, session_login
from flask_tidings.fences import raw_socket, redis_socket

# sha256 of gunicorn 27.0.1's GeventWorker.run, whose accept loop StreamWorker.run copies (it
# stops accepting before it drains). A new gunicorn: compare the two, port the change, update this.
GEVENT_WORKER_RUN_SHA256 = "50119854ef8be38caa6e96a5978978de9c42bc0b24ac22228101399e7ef3005d"


def test_gunicorns_gevent_accept_loop_is_the_one_stream_worker_copies():
    source = inspect.getsource(ggevent.GeventWorker.run)
    assert hashlib.sha256(source.encode()).hexdigest() == GEVENT_WORKER_RUN_SHA256, (
        "gunicorn's GeventWorker.run changed: port the change to flask_tidings.gunicorn.StreamWorker.run"
    )


def test_gunicorn_still_counts_max_requests_and_asks_is_already_handled_per_request():
    # StreamWorker moves max_requests aside (streams must not count) and ends the keep-alive loop
    # of a taken connection through is_already_handled(ALREADY_HANDLED).
    source = inspect.getsource(base_async.AsyncWorker.handle_request)
    assert "self.nr >= self.max_requests" in source
    assert "self.is_already_handled(respiter)" in source
    assert base_async.ALREADY_HANDLED is not None


def _resp_server() -> tuple[socket.socket, int]:
    """A listener answering +OK to every line: enough for redis-py's connection handshake."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(b"+OK\r\n" * data.count(b"*"))

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def test_redis_py_keeps_its_connections_socket_where_the_hub_reads_it():
    listener, port = _resp_server()
    conn = redis.Connection(host="127.0.0.1", port=port, protocol=2)
    conn.connect()
    try:
        sock = redis_socket(conn)
        assert isinstance(sock, socket.socket) and sock.fileno() == conn._sock.fileno()
    finally:
        conn.disconnect()
        listener.close()


def test_gevents_socket_wraps_the_real_one_under_sock():
    wrapped = gevent.socket.socket()
    try:
        assert isinstance(wrapped._sock, _socket.socket)
    finally:
        wrapped.close()


def test_a_raw_socket_is_cpythons_own_not_gevents():
    a, b = socket.socketpair()
    raw = raw_socket(a.detach())
    try:
        assert type(raw) is _socket.socket
        raw.setblocking(False)
        assert raw.send(b"x") == 1 and b.recv(1) == b"x"
    finally:
        raw.close()
        b.close()


def test_redis_py_clusters_keep_their_slot_map_in_nodes_manager():
    assert "self.nodes_manager = NodesManager(" in inspect.getsource(RedisCluster.__init__)
    assert callable(NodesManager.get_node_from_slot) and callable(NodesManager.initialize)
    assert list(inspect.signature(NodesManager.get_node_from_slot).parameters)[:2] == ["self", "slot"]


def test_flask_login_keeps_the_login_under_its_session_key():
    app = Flask(__name__)
    app.secret_key = "x"
    LoginManager(app)

    class Someone(UserMixin):
        def get_id(self) -> str:
            return "login-token"

    with app.test_request_context():
        login_user(Someone())
        assert session[FLASK_LOGIN_ID_KEY] == "login-token"
        assert session_login() == "login-token"


def test_drawing_without_the_user_makes_current_user_anonymous():
    from flask_login import current_user

    app = Flask(__name__)
    app.secret_key = "x"
    manager = LoginManager(app)
    loads = []
    manager.user_loader(lambda user_id: loads.append(user_id))

    with app.test_request_context():
        session[FLASK_LOGIN_ID_KEY] = "someone"
        draw_without_user()
        assert not current_user.is_authenticated
        assert loads == [], "the user loader (a database query) was not called"
