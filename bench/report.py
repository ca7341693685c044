"""Results of the scenarios as JSON, Markdown and a plot of latency distributions.

``results.json`` keeps each scenario's figures under its name, with when it last ran, so a
scenario run alone (``--only``) replaces its own section and leaves the others'. Latency
series are kept as 200 quantiles, enough to draw their distributions again.
"""

from __future__ import annotations

import json
from pathlib import Path

QUANTILES = 200


def cdf(samples: list[float]) -> list[float]:
    """``QUANTILES`` evenly spaced quantiles of ``samples`` (seconds), in milliseconds."""
    s = sorted(samples)
    if not s:
        return []
    return [round(s[min(len(s) - 1, int(i * len(s) / QUANTILES))] * 1000, 3) for i in range(QUANTILES)] + [
        round(s[-1] * 1000, 3)
    ]


def merge(path: Path, mode: str, machine: dict, ran: dict[str, dict], samples: dict) -> dict:
    """The results at ``path`` (if it holds a run of the same mode) updated with this run's."""
    old = json.loads(path.read_text()) if path.exists() else {}
    results = old if old.get("mode") == mode else {}
    results.update(mode=mode, machine=machine)
    results.setdefault("scenarios", {}).update(ran)
    results.setdefault("cdf", {}).update({label: cdf(v) for label, v in samples.items() if v})
    results["ratios"] = ratios(results["scenarios"])
    return results


def write(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    plot(results["cdf"], out / "latency.png")
    print(f"wrote {out}/results.md, results.json, latency.png", flush=True)


def ratios(sc: dict) -> dict:
    """Tidings / peer ratios on the measures both have."""
    out = {}
    t_levels = {lv["streams"]: lv for lv in sc.get("streams", {}).get("levels", [])}
    peer = sc.get("flask_sse", {})
    for lv in peer.get("levels", []):
        t = t_levels.get(lv["streams"])
        if t:
            for key, measure in (
                ("app_rss_per_stream", "app_rss_per_stream_kb"),
                ("redis_clients", "redis_connected_clients"),
                ("redis_memory_per_stream", "redis_used_memory_per_stream_b"),
            ):
                out[f"{key}@{lv['streams']}"] = _ratio(t[measure], lv[measure])
    for key, fs in peer.get("publish_to_event", {}).items():
        t = sc.get("publish", {}).get(key)
        if t and "p99" in fs["latency_ms"] and "p99" in t["latency_ms"]:
            out[f"publish_p99@{key}"] = _ratio(t["latency_ms"]["p99"], fs["latency_ms"]["p99"])
    t_rate = sc.get("rate", {}).get("max_sustained_deliveries_per_s")
    f_rate = peer.get("delivery_rate", {}).get("max_sustained_deliveries_per_s")
    if t_rate is not None and f_rate:
        out["max_sustained_deliveries"] = _ratio(t_rate, f_rate)
    if "polling" in sc and "streams" in sc:
        out["polling_requests_per_s_vs_idle_tidings"] = {
            "polling": sc["polling"]["requests_per_s"],
            "tidings_idle": sc["streams"].get("idle", {}).get("http_requests_per_s"),
        }
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _latency_row(path: str, load: str, lt: dict, lost: object = "") -> str:
    return (
        f"| {path} | {load} | {lt.get('n')} | {lt.get('p50')} | {lt.get('p90')} | "
        f"{lt.get('p99')} | {lt.get('max')} | {lost} |"
    )


def markdown(r: dict) -> str:
    m, sc = r["machine"], r["scenarios"]
    lines = [
        f"# Tidings benchmark ({r['mode']})",
        "",
        f"Machine: {m['cores']} cores, {m['memory_gb']} GB, {m['system']}, Python {m['python']}.",
        "Load clients, Redis and gunicorn share these cores. When each scenario last ran: "
        + ", ".join(f"{name} {s['_ran']['date']} ({s['_ran']['seconds']} s)" for name, s in sc.items())
        + ".",
        "",
    ]
    if "streams" in sc or "flask_sse" in sc:
        lines += [
            "## Streams: memory, connect CPU, Redis connections",
            "",
            "| server | streams | opened | errors | connect CPU / stream (ms) | app RSS / stream (KB) "
            "| kernel slab / stream (KB) | Redis mem / stream (B) | Redis clients |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, key in (("Tidings", "streams"), ("Flask-SSE", "flask_sse")):
            for lv in sc.get(key, {}).get("levels", []):
                lines.append(
                    f"| {name} | {lv['streams']} | {lv['opened']} | {lv['errors']} | "
                    f"{lv.get('connect_cpu_ms_per_stream', '')} | {lv['app_rss_per_stream_kb']} | "
                    f"{lv.get('kernel_slab_per_stream_kb', '')} | {lv['redis_used_memory_per_stream_b']} | "
                    f"{lv['redis_connected_clients']} |"
                )
        lines += [
            "",
            "Connect CPU: the gunicorn workers' CPU time while the streams open, divided by the streams "
            "(session, login lookup, limits, cap, subscribe, store read, hand-over, parsing). Kernel slab: "
            "growth of `SReclaimable + SUnreclaim` in /proc/meminfo while they open, per stream; both "
            "ends of each connection are on this machine, so it counts two sockets.",
        ]
        iso = sc.get("streams", {}).get("connect_isolated")
        if iso:
            lines += [
                "",
                f"**Connect CPU with the server on a core of its own: {iso['median_ms']} ms per stream** "
                f"(median of {len(iso['rounds_ms'])} rounds of {iso['streams']} connects: "
                + ", ".join(f"{r} ms" for r in iso["rounds_ms"])
                + "). One worker on the last core, the load clients and Redis on the others, as on "
                "machines of their own. In the table the two workers share both cores with them, and "
                "every process runs slower for it (caches, switches): that figure is this rig's, this one "
                "the server's.",
            ]
    if "floor" in sc:
        f = sc["floor"]
        lines += [
            "",
            "Reference: a bare WSGI generator (one greenlet per stream, no Flask, no Redis) under the "
            f"same gunicorn settings costs {f['app_rss_per_stream_kb']} KB per idle stream "
            f"({f['opened']} streams). Tidings' open streams hold no greenlet, hence less.",
        ]
    if "hold" in sc:
        h = sc["hold"]
        lines += [
            "",
            f"Held: {h['open_after_hold']} of {h['target']} streams open after {h['hold_seconds']} s "
            f"({h['connect_errors']} connect errors, {h['dropped']} dropped; {h['workers']} workers, "
            f"{h['redis_connected_clients']} Redis clients, {h['app_rss_per_stream_kb']} KB RSS per stream).",
        ]
    lines += [
        "",
        "## Latency (ms)",
        "",
        "| path | load | n | p50 | p90 | p99 | max | lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level, s in sc.get("streams", {}).get("send_to_event", {}).items():
        lines.append(_latency_row("Tidings send→event", f"{level} streams", s["latency_ms"]))
    for name, section in (
        ("Tidings", sc.get("publish", {})),
        ("Flask-SSE", sc.get("flask_sse", {}).get("publish_to_event", {})),
    ):
        for load, s in section.items():
            if load.startswith("_"):
                continue
            load_text = f"{load.replace('@', ' streams @ ')} deliveries/s"
            lines.append(_latency_row(f"{name} publish→event", load_text, s["latency_ms"], s["lost"]))
    if "polling" in sc:
        p = sc["polling"]
        lines.append(
            _latency_row("Polling (implied)", f"{p['clients']} clients / 10 s", p["implied_latency_ms"])
        )
    lines += ["", "## Delivery rate (p99 ≤ 100 ms, 0 lost)", ""]
    for name, dr in (
        ("Tidings", sc.get("rate")),
        ("Flask-SSE", sc.get("flask_sse", {}).get("delivery_rate")),
    ):
        if dr:
            steps = ", ".join(
                f"{s['achieved_deliveries_per_s']}/s p99 {s['latency_ms'].get('p99')} ms lost {s['lost']}"
                for s in dr["steps"]
            )
            lines.append(
                f"- {name}: **{dr['max_sustained_deliveries_per_s']} deliveries/s** sustained ({steps})"
            )
    idle = sc.get("streams", {}).get("idle")
    if idle or "polling" in sc:
        lines += ["", "## Idle cost", ""]
    if idle:
        lines.append(
            f"- Tidings, {idle['streams']} idle streams: {idle['sql_per_s']} SQL statements/s, "
            f"{idle['http_requests_per_s']} HTTP requests/s (over {idle['seconds']} s)"
        )
    if "polling" in sc:
        p = sc["polling"]
        lines.append(
            f"- Seed polling, {p['clients']} clients every 10 s: {p['requests_per_s']} requests/s, "
            f"{p['sql_per_s']} SQL statements/s, response p50 {p['response_ms'].get('p50')} ms"
        )
    if "restart" in sc or "restart_drain" in sc:
        lines += ["", "## Restart (a deploy)", ""]
    if "restart" in sc:
        rc = sc["restart"]
        lines.append(
            f"- **Carried** (the default): `kill -HUP` of the gunicorn master under {rc['streams']} "
            f"streams on {rc['workers']} workers. The old workers carried {rc['carried']} streams to "
            f"the new ones (done {rc['carry_seconds']} s after the signal, most of it the new workers' "
            f"boot; the old workers were gone after {rc['old_workers_gone_seconds']} s); "
            f"**{rc['reconnects']} streams closed** and reconnected. Counts were stored for a tenth of "
            f"the users at a time until then ({rc['rounds_stored'] - 1} rounds), then for every user "
            f"(done {rc['last_stored_seconds']} s after the signal): every stream was at the last "
            f"{rc['converged_seconds']} s after the signal, **{rc['lost']} lost**. The new workers spent "
            f"{rc['new_workers_cpu_ms_per_stream']} ms of CPU per carried stream (boot excluded)."
        )
    if "restart_drain" in sc:
        rc = sc["restart_drain"]
        lines.append(
            f"- **Drained** (`SSE_HANDOFF_SECONDS=0`): the same deploy with every stream closed after a "
            f"`retry:` drawn from 0.5–{rc['drain_window_ms'] / 1000:g} s, honoured as EventSource does: "
            f"all back **{rc['all_back_seconds']} s** after the signal; with counts stored as above "
            f"(the last done after {rc['last_stored_seconds']} s), every stream at the last after "
            f"{rc['converged_seconds']} s; {rc['lost']} lost, "
            f"{rc['connect_errors']} refused connects retried, {rc['reconnects']} reconnects; the new "
            "workers spent "
            f"{rc['new_workers_cpu_ms_per_stream']} ms of CPU per reconnect (boot excluded)."
        )
    if "scaleout" in sc:
        lines += _scaleout(sc["scaleout"])
    lines += [
        "",
        "## Ratios (Tidings / peer)",
        "",
        "```",
        json.dumps(r.get("ratios", {}), indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def _scaleout(so: dict) -> list[str]:
    lines = [
        "",
        "## Scale-out: 2 web hosts, a 3-master cluster",
        "",
        f"{so['streams']} streams over 2 hosts (network namespaces, {so['workers_per_host']} gunicorn worker "
        "each), 10 tabs per user split over the hosts; the cluster has no replicas, like the single "
        "Redis; the same 2 cores carry both hosts, every Redis process, the publisher and the load "
        "clients. Redis CPU: cores each Redis process used during the publish→event run.",
        "",
        "| way | publish→event p50 / p99 / max (ms) | at deliveries/s | lost | highest rate, p99 ≤ 100 ms, "
        "0 lost | Redis CPU (cores) | web hosts' CPU (cores) | publisher's CPU (cores) "
        "| load clients' CPU (cores) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    steps = []
    for name, w in so["ways"].items():
        pe = w["publish_to_event"]
        lt = pe["latency_ms"]
        redis_cpu = ", ".join(
            f"{k} {v}" for k, v in pe["cores_used"].items() if k.startswith(("redis", "master", "replicas"))
        )
        lines.append(
            f"| {name} | {lt.get('p50')} / {lt.get('p99')} / {lt.get('max')} | "
            f"{pe['achieved_deliveries_per_s']} | {pe['lost']} | {w['max_sustained_deliveries_per_s']} | "
            f"{redis_cpu} | {pe['cores_used'].get('web hosts')} | {pe['cores_used'].get('publisher')} | "
            f"{pe['cores_used'].get('load clients', '')} |"
        )
        steps.append(
            f"- {name}: "
            + ", ".join(
                f"{r['achieved_deliveries_per_s']}/s p99 {r['latency_ms'].get('p99')} ms lost {r['lost']} "
                f"(web hosts {r['cores_used'].get('web hosts')} cores)"
                for r in w["rate_steps"]
            )
        )
    lines += ["", "Rising rates, until p99 > 100 ms or a loss:", "", *steps]
    return lines


def plot(series: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for label, ms in series.items():
        if ms:
            ax.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title("Notification latency: Tidings push vs Flask-SSE vs 10 s polling")
    ax.grid(True, which="both", alpha=0.3)
    if any(series.values()):
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
