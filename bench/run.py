"""The benchmark: ``python -m bench.run [--quick] [--only NAME,…] [--list]`` (``make bench``).

Builds a rig (bench/harness.py: a private redis-server, a SQLite database, bench users), runs
the scenarios (bench/scenarios/) in order, or only those named, and writes the report
(bench/report.py): docs/benchmarks/ for a full run, bench/results/ for a quick one.
docs/benchmarks/README.md says what each scenario measures and how.
"""

from __future__ import annotations

import argparse
import time

from bench import report
from bench.harness import ROOT, SCENARIOS, Rig, machine
from bench.scenarios import ORDER


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small run (a few minutes), as CI does")
    parser.add_argument("--only", default="", help="comma-separated scenarios to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--out", default=None, help="where to write results")
    args = parser.parse_args()
    if args.list:
        for name in ORDER:
            fn = SCENARIOS[name]
            print(f"{name:10} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return
    names = [n for n in args.only.split(",") if n] or ORDER
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; --list shows them")
    out = ROOT / (args.out or ("bench/results" if args.quick else "docs/benchmarks"))
    started = time.time()
    rig = Rig(args.quick)
    ran: dict[str, dict] = {}
    try:
        for name in names:
            t0 = time.time()
            result = SCENARIOS[name](rig)
            result["_ran"] = {
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "seconds": round(time.time() - t0, 1),
            }
            ran[name] = result
    finally:
        if ran:
            mode = "quick" if args.quick else "full"
            report.write(out, report.merge(out / "results.json", mode, machine(), ran, rig.samples))
        rig.close()
    print(f"benchmark finished in {round(time.time() - started, 1)} s", flush=True)


if __name__ == "__main__":
    main()
