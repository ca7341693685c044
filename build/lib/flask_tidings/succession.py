"""Carrying taken connections from a stopping gunicorn worker to the workers that succeed it.

On a deploy (``kill -HUP``) gunicorn forks the new workers first, then sends SIGTERM to the
old ones. Rather than close every open notification stream and have every browser reconnect
in the same few seconds, a stopping worker passes each stream's socket, with the little
state it needs, to a new worker: the TCP connection never closes and the browser notices
nothing. The same happens when one worker restarts after ``max_requests``: its sibling
takes its streams.

The sockets travel over a Unix ``SOCK_SEQPACKET`` socket as ``SCM_RIGHTS`` ancillary data,
one packet of at most :data:`PACKET_FDS` descriptors with a JSON header. Each worker listens
on ``<dir>/<pid>.sock`` once its app is loaded (:class:`Inbox`); ``<dir>`` belongs to one
gunicorn master (:func:`directory`). A stopping worker first replaces its own socket with a
``<pid>.stopped`` mark, then waits until every worker the master forked after it (read from
``/proc``) listens or has stopped too, and offers its connections to those that listen
(:class:`Successors`). A receiver answers each
packet with one byte: ``1`` when it owns the descriptors, ``0`` when it refused them (it is
stopping too, or nothing in it takes that kind); a refused connection stays with the sender,
which closes it as before (``Owner.drain``), and its browser reconnects.

Nothing in the standard library or gunicorn does this (gunicorn hands its *listening*
sockets to a new master on USR2, never established connections), hence this module.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import gevent.socket

log = logging.getLogger(__name__)

# Linux takes at most 253 descriptors in one SCM_RIGHTS message (SCM_MAX_FD).
PACKET_FDS = 200
_MAX_PACKET = 1 << 20

# What receives carried connections, by kind: ``adopt(items)`` owns each ``(state, fd)`` once
# it returns (if it raises, the inbox closes them), and returns what drains them when this
# worker stops in its turn (an Owner).
Adopter = Callable[[list[tuple[dict, int]]], Any]
_adopters: dict[str, Adopter] = {}


def receive(kind: str, adopter: Adopter) -> None:
    """Let this process take carried connections of ``kind`` (the app registers at load)."""
    _adopters[kind] = adopter


def folder_of(master_pid: int) -> Path:
    """Where one gunicorn master's workers listen (see :func:`directory`)."""
    return Path(tempfile.gettempdir()) / f"tidings-succession-{master_pid}"


def directory(master_pid: int) -> Path:
    """The folder where one gunicorn master's workers listen for carried connections.

    OSError unless it is this user's own and closed to everyone else (another local user must
    not be able to place or reach the sockets).
    """
    path = folder_of(master_pid)
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{path} is not a private folder of this user")
    return path


class Inbox:
    """This worker's socket for connections carried to it: ``<dir>/<pid>.sock``."""

    def __init__(
        self, folder: Path, name: str, accepting: Callable[[], bool], adopted: Callable[[Any], None]
    ) -> None:
        """``accepting()``: whether to take connections now; ``adopted(owner)``: register an owner."""
        self.path = folder / f"{name}.sock"
        self._accepting = accepting
        self._adopted = adopted
        self._listener: socket.socket | None = None
        self._greenlet: gevent.Greenlet | None = None

    def open(self) -> Inbox:
        """Listen (replacing a stale socket file of a dead process with the same name)."""
        # gevent's sockets, whether or not the process is monkey-patched: the worker never blocks.
        listener = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        listener.bind(str(self.path))
        listener.listen(16)
        self._listener = listener
        self._greenlet = gevent.spawn(self._accept)
        return self

    def close(self) -> None:
        """Take nothing more: the socket file goes first, so no sender finds it, and a mark
        tells older workers not to wait for this one."""
        self.path.with_suffix(".stopped").touch()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            gevent.spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            if not _sibling(conn):
                log.warning(
                    "refused a connection to %s from a process that is not a sibling worker", self.path
                )
                return
            while True:
                try:
                    data, fds, _, _ = socket.recv_fds(conn, _MAX_PACKET, PACKET_FDS)
                except OSError:
                    return
                if not data:
                    return
                self._take(conn, data, fds)

    def _take(self, conn: socket.socket, data: bytes, fds: list[int]) -> None:
        try:
            header = json.loads(data)
            adopter = _adopters.get(header["kind"])
            states = header["states"]
            ok = adopter is not None and self._accepting() and len(states) == len(fds)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            for fd in fds:
                os.close(fd)
            _answer(conn, b"0")
            return
        _answer(conn, b"1")  # from here on the descriptors are ours, whatever the adopter does
        try:
            owner = adopter(list(zip(states, fds, strict=True)))
        except Exception:
            log.exception("could not adopt %d carried connections; their browsers reconnect", len(fds))
            for fd in fds:
                os.close(fd)
            return
        self._adopted(owner)


def _sibling(conn: socket.socket) -> bool:
    """Whether the peer is a worker of this one's master, run by the same user (SO_PEERCRED)."""
    try:
        pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return False
    return uid == os.getuid() and _parent(pid) == os.getppid()


def _answer(conn: socket.socket, byte: bytes) -> None:
    try:
        conn.send(byte)
    except OSError:
        pass


class Successors:
    """The workers that may take a stopping worker's connections, and the way to them."""

    def __init__(self, folder: Path, me: int, newer: Callable[[], set[int]] | None = None) -> None:
        """``newer()``: the live workers forked after ``me`` (default: read from ``/proc``)."""
        self.folder = folder
        self.me = me
        self._newer = newer or (lambda: newer_siblings(me))
        self._conns: dict[Path, socket.socket] = {}
        self._turn = 0

    def wait(self, timeout: float) -> bool:
        """Wait until every newer worker listens (they boot while this one stops), at most
        ``timeout`` seconds; whether any successor listens then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            known = {p.stem for p in self._sockets()} | {p.stem for p in self.folder.glob("*.stopped")}
            if all(str(pid) in known for pid in self._newer()):
                break
            gevent.sleep(0.05)
        self._forget_the_dead()
        return bool(self._sockets())

    def _forget_the_dead(self) -> None:
        """Remove the marks of workers that are gone (every deploy leaves two), and the sockets
        of those that died without closing them (kill -9)."""
        for path in [*self.folder.glob("*.stopped"), *self.folder.glob("*.sock")]:
            if path.stem.isdigit() and not Path(f"/proc/{path.stem}").exists():
                path.unlink(missing_ok=True)

    def _sockets(self) -> list[Path]:
        found = [p for p in self.folder.glob("*.sock") if p.stem != str(self.me)]
        newer = {str(pid) for pid in self._newer()}
        return sorted(found, key=lambda p: p.stem not in newer)  # the new workers first

    def carry(self, kind: str, items: list[tuple[dict, int]]) -> bool:
        """Offer one packet of connections (at most PACKET_FDS); True once a successor owns them.

        Successors are tried in turn, starting one further each packet, so the new workers
        share the load. On False the caller still owns every descriptor.
        """
        data = json.dumps({"kind": kind, "states": [state for state, _ in items]}).encode()
        fds = [fd for _, fd in items]
        targets = self._sockets()
        self._turn += 1
        for i in range(len(targets)):
            path = targets[(self._turn + i) % len(targets)]
            try:
                conn = self._conns.get(path) or self._connect(path)
                socket.send_fds(conn, [data], fds)
            except OSError as exc:
                log.info("could not carry connections to %s (%s)", path.name, exc)
                self._forget(path)
                continue
            try:
                answer = conn.recv(1)
            except OSError as exc:
                # Sent, and no answer in time: that worker may own them. They are never offered
                # to another (two workers would write to one connection): given up, and at worst
                # their browsers reconnect.
                log.warning(
                    "no answer from %s about %d streams (%s); giving them up", path.name, len(fds), exc
                )
                self._forget(path)
                return True
            if answer == b"1":
                return True
            self._forget(path)  # refused (its copies are closed) or gone before it read them
        return False

    def _connect(self, path: Path) -> socket.socket:
        conn = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.settimeout(5)
        try:
            conn.connect(str(path))
        except OSError:
            conn.close()
            raise
        self._conns[path] = conn
        return conn

    def _forget(self, path: Path) -> None:
        conn = self._conns.pop(path, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close the connections to the successors."""
        for path in list(self._conns):
            self._forget(path)


def newer_siblings(me: int) -> set[int]:
    """The live children of this worker's master that it forked after this worker."""
    master = os.getppid()
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return set()
    mine = _started(me)
    newer = set()
    for pid in map(int, children):
        if pid != me and (_started(pid), pid) > (mine, me):
            newer.add(pid)
    return newer


def _started(pid: int) -> int:
    """When ``pid`` started, in clock ticks after boot (``/proc/<pid>/stat`` field 22); 0 if gone."""
    return _stat_field(pid, 22)


def _parent(pid: int) -> int:
    """``pid``'s parent (``/proc/<pid>/stat`` field 4); 0 if gone."""
    return _stat_field(pid, 4)


def _stat_field(pid: int, field: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[field - 3])
