"""Render deploy/nginx/tidings.conf: as a site file (--site), or inside a standalone nginx.conf.

The standalone form (``make run-proxy``, the tests) runs Debian's nginx as an unprivileged
foreground process with every path under ``--prefix``: nothing of /etc/nginx is touched.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "deploy" / "nginx" / "tidings.conf"

STANDALONE = """\
# Rendered by scripts/nginx_conf.py; see deploy/nginx/tidings.conf.
worker_processes ${WORKERS};
worker_rlimit_nofile ${NOFILE};
pid ${PREFIX}/nginx.pid;
error_log ${PREFIX}/error.log warn;
daemon off;
${USER}

events {
    # A stream holds two connections (browser, upstream).
    worker_connections ${CONNECTIONS};
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log ${ACCESS_LOG};
    sendfile on;
    client_body_temp_path ${PREFIX}/tmp/body;
    proxy_temp_path ${PREFIX}/tmp/proxy;
    fastcgi_temp_path ${PREFIX}/tmp/fastcgi;
    uwsgi_temp_path ${PREFIX}/tmp/uwsgi;
    scgi_temp_path ${PREFIX}/tmp/scgi;

${SITE}
}
"""


def fill(template: str, **values: object) -> str:
    """Replace each ``${NAME}``; nginx's own ``$variables`` stay as they are."""
    return re.sub(r"\$\{([A-Z_]+)\}", lambda m: str(values[m.group(1)]), template)


def render_site(upstreams: list[str], listen: str, cert: str, key: str, server_name: str = "_") -> str:
    """The site file with its values filled in."""
    return fill(
        SITE.read_text(),
        UPSTREAM_SERVERS="\n".join(f"    server {u} max_fails=1 fail_timeout=5s;" for u in upstreams),
        LISTEN=listen,
        SERVER_NAME=server_name,
        CERT=cert,
        KEY=key,
        STATIC_ROOT=str(ROOT / "app" / "static"),
        TIDINGS_STATIC_ROOT=str(ROOT / "flask_tidings" / "static"),
    )


def render_standalone(prefix: Path, site: str, workers: int = 1, access_log: str = "off") -> str:
    """A whole nginx.conf around ``site``, keeping pid, logs and temp files under ``prefix``."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    # As root, nginx's workers would drop to nobody, who may not read this checkout: keep them ours.
    user = "user root;" if os.geteuid() == 0 else ""
    # As many descriptors as this machine lets a process have (streams are two each).
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 20)
    return fill(
        STANDALONE,
        WORKERS=workers,
        NOFILE=nofile,
        CONNECTIONS=max(1024, nofile - 64),
        PREFIX=prefix,
        USER=user,
        ACCESS_LOG=access_log,
        SITE=site,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", action="append", required=True, help="host:port of a web host")
    parser.add_argument("--listen", default="443")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--server-name", default="_")
    parser.add_argument("--site", action="store_true", help="only the site file (sites-available)")
    parser.add_argument("--prefix", type=Path, help="standalone: where pid, logs and temp files go")
    parser.add_argument("--access-log", default="off")
    args = parser.parse_args()
    site = render_site(args.upstream, args.listen, args.cert, args.key, args.server_name)
    if args.site:
        sys.stdout.write(site)
        return
    if args.prefix is None:
        parser.error("--prefix is needed for a standalone nginx.conf")
    sys.stdout.write(render_standalone(args.prefix.resolve(), site, access_log=args.access_log))


if __name__ == "__main__":
    main()
