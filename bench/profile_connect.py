"""Where a stream connect's CPU goes: ``python -m bench.profile_connect [--streams N] [--path P]``.

One gunicorn worker on the benchmark rig (``--workers``); N streams open from two load
processes (``--load``) while py-spy samples the worker (``--no-spy`` for the CPU figure
alone). Prints the worker's CPU per connect and the share of samples spent in each part of
the path. ``--path /healthz`` gives the same figures for a request that is not a stream
(the framework's own floor).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import time

from bench.harness import BIN, CpuMeter, Load, Rig

# Where a connect's time goes, as frames in the sampled stacks (a frame counts once per sample).
PARTS = {
    "gunicorn: accept, parse, respond": "GeventWorker.handle (",
    "Flask app (all of it)": "Flask.__call__",
    "request context, session cookie": "RequestContext.push",
    "before_request hooks": "Flask.preprocess_request",
    "after_request hooks (headers)": "Flask.finalize_request",
    "login check": "user_id_of_login",
    "user load (Flask-Login)": "load_user (app/models.py",
    "rate limit wrapper": "RouteLimit.__call__",
    "stream cap (Redis)": "StreamCap.acquire",
    "subscribe (hub)": "Hub.subscribe",
    "store read": "since_id (",
    "hand-over and adopt": "Handover.take",
    "event loop, listener": "Hub.run",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=4000)
    parser.add_argument("--path", default="/stream")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (py-spy samples the first)")
    parser.add_argument("--load", type=int, default=2, help="load-client processes")
    parser.add_argument("--no-spy", action="store_true")
    parser.add_argument("--keep", default=None, help="also keep the sampled stacks (py-spy raw) here")
    args = parser.parse_args()
    rig = Rig(quick=True)
    server = rig.server("profile", workers=args.workers)
    load = Load(server.port, args.load)
    load.same({"cmd": "config", "reconnect": False})
    specs = rig.specs(args.streams, max(1, min(len(rig.users), args.streams // 4)))
    for spec in specs:
        spec["path"] = args.path
    raw = rig.tmp / "flame.txt"
    spy = None
    if not args.no_spy:
        worker = server.worker_pids()[0]
        spy = subprocess.Popen(
            [
                BIN / "py-spy",
                "record",
                "-p",
                str(worker),
                "-o",
                raw,
                "-f",
                "raw",
                "-r",
                "500",
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
    try:
        cpu = CpuMeter({"app": server.worker_pids()})
        started = time.time()
        opened = load.open(specs)["opened"]
        elapsed = time.time() - started
        per_connect = cpu.cores_used(elapsed)["app"] * elapsed / max(1, opened) * 1000
        print(f"{opened} connects to {args.path}: {per_connect:.3f} ms of worker CPU each")
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
            report(raw)
            if args.keep:
                shutil.copy(raw, args.keep)
    finally:
        load.close()
        load.exit()
        server.stop()
        rig.close()


def report(raw) -> None:
    total, parts = 0, collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        for part, frame in PARTS.items():
            if frame in stack:
                parts[part] += int(n)
    print(f"share of {total} samples of the worker:")
    for part in PARTS:
        print(f"  {100 * parts[part] / max(1, total):5.1f} %  {part}")


if __name__ == "__main__":
    main()
