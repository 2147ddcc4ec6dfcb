"""What a run of ``python -m bench`` reports: the targets, one Markdown table, PNG plots, README."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _get(data: dict, *keys, default=None):
    for key in keys:
        if not isinstance(data, dict) or key not in data or data[key] is None:
            return default
        data = data[key]
    return data


### Targets ###


def targets(results: dict) -> list[dict]:
    """Every target of issues 5 (layer), 6 (entrypoint) and 8 with its measured value; ``met`` is None when not measured."""
    s = results["scenarios"]
    rows: list[dict] = []

    def add(scenario: str, text: str, value, bound: float, at_least: bool, unit: str = "x") -> None:
        if scenario not in s:
            return
        met = None if value is None else (value >= bound if at_least else value <= bound)
        rows.append({"scenario": scenario, "target": text, "measured": value, "unit": unit, "met": met})

    for side in ("sync", "async"):
        ratios = _get(s, "layer", "ratios", default={})
        add("layer", f"layer send ({side}) >= 10x channels_redis", ratios.get(f"{side}_send"), 10, True)
        add("layer", f"layer receive ({side}) >= 10x channels_redis", ratios.get(f"{side}_receive"), 10, True)
        add("layer", f"layer group deliveries ({side}) >= 5x channels_redis", ratios.get(f"{side}_group"), 5, True)
    http = _get(s, "http", "ratios", default={})
    add("http", "HTTP combined >= 2x Daphne+Django ASGI requests/s", http.get("combined_vs_daphne_asgi_rps"), 2, True)
    add("http", "HTTP split web + 1 worker >= 1.5x Daphne+Django ASGI requests/s",
        http.get("split_1_vs_daphne_asgi_rps"), 1.5, True)
    rate = _get(s, "http", "rate", default=0)
    add("http", f"HTTP combined p99 at {rate:.0f} requests/s <= 3x gunicorn's",
        http.get("combined_vs_gunicorn_p99_at_rate"), 3, False)
    add("http", f"HTTP split web + 1 worker p99 at {rate:.0f} requests/s <= 3x gunicorn's",
        http.get("split_1_vs_gunicorn_p99_at_rate"), 3, False)
    add("broadcast", "broadcast p99 latency <= 0.5x Channels 4", _get(s, "broadcast", "ratios", "p99_latency"), 0.5, False)
    add("broadcast", "broadcast: 100% of deliveries", _get(s, "broadcast", "ours", "delivered_fraction"), 1.0, True,
        unit="fraction")
    add("memory", "memory per idle WebSocket <= 1x Channels 4", _get(s, "memory", "ratios", "per_connection"), 1, False)
    add("deploy", "rolling deploy: 0 WebSockets dropped", _get(s, "deploy", "websockets_dropped"), 0, False, unit="count")
    add("deploy", "rolling deploy: 0 HTTP requests failed", _get(s, "deploy", "http_failed"), 0, False, unit="count")
    dyno = _get(s, "dyno", "ratios", default={})
    add("dyno", "dyno: combined WEB_CONCURRENCY=2 >= 0.75x gunicorn -w 2 requests/s",
        dyno.get("combined_vs_gunicorn_rps"), 0.75, True)
    add("dyno", f"dyno: combined WEB_CONCURRENCY=2 p99 at {_get(s, 'dyno', 'rate', default=0):.0f} requests/s "
        "<= 2x gunicorn -w 2", dyno.get("combined_vs_gunicorn_p99_at_rate"), 2, False)
    add("dyno", "dyno: idle memory of every process <= 0.5 of a 512 MB Standard-1X",
        dyno.get("combined_memory_of_dyno"), 0.5, False, unit="fraction")
    add("deploy", "full deploy (web and worker replaced): 0 messages lost by clients",
        _get(s, "deploy", "full_deploy", "ours", "lost"), 0, False, unit="count")
    return rows


### Markdown ###


def _n(value, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _x(value) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _errors(result: dict) -> str:
    bad = result["throughput"]["non_2xx"] + result["throughput"]["socket_errors"]
    return f" ({bad:,} errors)" if bad else ""


def _failed(result: dict) -> str:
    fixed = result["fixed_rate"]
    if not fixed["failures"]:
        return ""
    how = ", ".join(f"{status}: {count:,}" for status, count in sorted(fixed.get("statuses", {}).items())
                    if not status.startswith(("2", "3")))
    return f" ({fixed['failures']:,} of {fixed['requests']:,} failed{'; ' + how if how else ''})"


def _measured(row: dict) -> str:
    value = row["measured"]
    if value is None:
        return "not measured"
    if row["unit"] == "x":
        return f"{value:.2f}x"
    if row["unit"] == "fraction":
        return f"{value * 100:.1f}%"
    return f"{value:,}"


def markdown(results: dict) -> str:
    """The whole run as one header, one table of figures against the peers, and the targets."""
    m = results["machine"]
    s = {name: outcome for name, outcome in results["scenarios"].items() if "error" not in outcome}
    before, after = results["load_before"][0], results["load_after"][0]
    lines = [
        f"Measured {results['date']} by `python -m bench{'' if results['profile'] == 'full' else ' --' + results['profile']}` "
        f"in {results['seconds']:.0f} s on {m['cpu']}, {m['cores']} cores, Python {m['python']}, Redis {m['redis']}, "
        f"load average {before:.2f} before and {after:.2f} after (1 min). Every peer ran on the same machine in "
        "the same run, alternating with this project; ratios are this project / the peer.",
        "",
        "| scenario | measure | paas-channels | peer | peer's figure | ratio |",
        "|---|---|---:|---|---:|---:|",
    ]
    if "layer" in s:
        layer = s["layer"]
        for key, text in (("send", "sends/s"), ("receive", "receives/s"), ("request_reply", "request/reply round trips/s"),
                          ("group", "group deliveries/s")):
            lines.append(f"| 1 layer | {text} (sync API) | {_n(layer['paas_sync'][key])} | channels_redis 4 | "
                         f"{_n(layer['channels_redis'][key])} | {_x(layer['ratios'][f'sync_{key}'])} |")
    if "http" in s:
        http = s["http"]["results"]
        rate = s["http"]["rate"]
        peers = [(name, http[name]) for name in ("daphne_asgi", "gunicorn") if name in http]
        for name in ("combined", "combined_direct", "split_1", "split_2"):
            if name not in http:
                continue
            ours = http[name]
            for peer_name, peer in peers:
                lines.append(
                    f"| 2 HTTP | {ours['label']}: requests/s | {_n(ours['throughput']['requests_per_s'])}{_errors(ours)} | "
                    f"{peer['label']} | {_n(peer['throughput']['requests_per_s'])}{_errors(peer)} | "
                    f"{_x(ours['throughput']['requests_per_s'] / peer['throughput']['requests_per_s'])} |")
            if "gunicorn" in http:
                ours_p99, peer_p99 = ours["fixed_rate"]["latency_ms"]["p99"], http["gunicorn"]["fixed_rate"]["latency_ms"]["p99"]
                lines.append(f"| 2 HTTP | {ours['label']}: p99 ms at {rate:.0f} requests/s | {_n(ours_p99, 1)}"
                             f"{_failed(ours)} | {http['gunicorn']['label']} | {_n(peer_p99, 1)}{_failed(http['gunicorn'])} | "
                             f"{_x(ours_p99 / peer_p99)} |")
    if "broadcast" in s:
        b = s["broadcast"]
        ours, peer = b["ours"], b["channels4"]
        what = f"{ours['clients']:,} clients, {ours['broadcasts']} broadcasts"
        def lost(side: dict) -> str:
            notes = []
            if side["connect_failed"]:
                notes.append(f"{side['connect_failed']:,} refused at connect")
            if side["closed_by_server"]:
                notes.append(f"{side['closed_by_server']:,} closed by the server")
            return f" ({', '.join(notes)})" if notes else ""

        lines.append(f"| 3 broadcast | {what}: delivered | {ours['delivered']:,}/{ours['expected']:,}{lost(ours)} | "
                     f"Channels 4 | {peer['delivered']:,}/{peer['expected']:,}{lost(peer)} | "
                     f"{_x(b['ratios']['delivered'])} |")
        if "web_cpu_seconds" in ours:
            lines.append(f"| 3 broadcast | {what}: web process CPU s | {ours['web_cpu_seconds']:.1f} | Channels 4 | "
                         f"{peer['web_cpu_seconds']:.1f} | {_x(ours['web_cpu_seconds'] / peer['web_cpu_seconds'] if peer['web_cpu_seconds'] else None)} |")
        for key in ("p50", "p99"):
            lines.append(f"| 3 broadcast | {what}: {key} latency ms | {_n(ours['latency_ms'][key], 1)} | Channels 4 | "
                         f"{_n(peer['latency_ms'][key], 1)} | {_x(b['ratios'][f'{key}_latency'])} |")
    if "memory" in s:
        mem = s["memory"]
        lines.append(f"| 4 memory | KiB RSS per idle WebSocket ({mem['ours']['connections']:,} open) | "
                     f"{_n(mem['ours']['kib_per_connection'], 1)} | Channels 4 on Daphne | "
                     f"{_n(mem['channels4']['kib_per_connection'], 1)} | {_x(mem['ratios']['per_connection'])} |")
    if "deploy" in s:
        d = s["deploy"]
        what = f"{d['workers']} workers replaced, {d['connected']:,} WebSockets, {d['rate']:.0f} requests/s"
        lines.append(f"| 5 deploy | {what}: WebSockets dropped | {d['websockets_dropped']} | none (no separate "
                     f"workers) | — | — |")
        lines.append(f"| 5 deploy | {what}: HTTP requests failed | {d['http_failed']}/{d['http_requests']:,} "
                     f"(after it, {d['group_delivered_after_deploy']:,} of the open WebSockets got a group message) | "
                     f"none | — | — |")
        full = d.get("full_deploy")
        if full:
            ours, bare, peer = full["ours"], full["ours_no_drain"], full["channels4"]
            what = f"full deploy (web and worker replaced), {ours['clients']} clients, {ours['rate']:.0f} msg/s"
            lines.append(f"| 5 deploy | {what}: messages lost by clients | {ours['lost']:,}/{ours['expected']:,} "
                         f"({ours['duplicates']} duplicates) | Channels 4 + reconnecting client | "
                         f"{peer['lost']:,}/{peer['expected']:,} ({peer['lost_before_deploy']:,} before the deploy) | — |")
            lines.append(f"| 5 deploy | {what}: reconnects/s on the new web, busiest second (connections refused "
                         f"or failed) | {ours['reconnect_peak_per_s']} ({ours['failed_connects']}) with the slow drain "
                         f"({ours['ws_drain']:g} s); {bare['reconnect_peak_per_s']} ({bare['failed_connects']}) without "
                         f"| Channels 4 | {peer['reconnect_peak_per_s']} ({peer['failed_connects']}) | — |")
    if "dyno" in s:
        dyno = s["dyno"]["results"]
        rate = s["dyno"]["rate"]
        peer = dyno.get("gunicorn")
        for name in ("combined", "combined_layer"):
            if name not in dyno or peer is None:
                continue
            ours = dyno[name]
            ours_p99, peer_p99 = ours["fixed_rate"]["latency_ms"]["p99"], peer["fixed_rate"]["latency_ms"]["p99"]
            lines += [
                f"| 6 dyno | {ours['label']}: requests/s | {_n(ours['throughput']['requests_per_s'])}{_errors(ours)} | "
                f"{peer['label']} | {_n(peer['throughput']['requests_per_s'])}{_errors(peer)} | "
                f"{_x(ours['throughput']['requests_per_s'] / peer['throughput']['requests_per_s'])} |",
                f"| 6 dyno | {ours['label']}: p99 ms at {rate:.0f} requests/s | {_n(ours_p99, 1)}{_failed(ours)} | "
                f"{peer['label']} | {_n(peer_p99, 1)}{_failed(peer)} | {_x(ours_p99 / peer_p99)} |",
                f"| 6 dyno | {ours['label']}: idle MiB resident, {ours['idle_memory']['processes']} processes | "
                f"{_n(ours['idle_memory']['total_mib'], 1)} | {peer['label']} | {_n(peer['idle_memory']['total_mib'], 1)} | "
                f"{_x(ours['idle_memory']['total_mib'] / peer['idle_memory']['total_mib'])} |",
            ]
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    for row in results["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        lines.append(f"| {row['target']} | {_measured(row)} | {met} |")
    notes = [f"**{name} failed**: {outcome['error']}." for name, outcome in results["scenarios"].items()
             if "error" in outcome]
    if "broadcast" in s:
        notes.append(f"Broadcast peer: {s['broadcast']['peer_config']}.")
    if "deploy" in s:
        notes.append(f"Deploy: {s['deploy']['peer_note']}.")
        if s["deploy"].get("full_deploy"):
            notes.append(f"Full deploy: {s['deploy']['full_deploy']['peer_note']}.")
    if "http" in s:
        notes.append(f"HTTP load generator: {s['http']['generator']}; every server runs the example project's settings "
                     "(Django's default middleware plus WhiteNoise, DEBUG off) and the same sync view; the "
                     "Daphne + Django ASGI peer is `daphne project.asgi:application` as Django's docs deploy it.")
    if notes:
        lines += ["", " ".join(notes)]
    return "\n".join(lines)


### Plots ###


def plots(results: dict, out: Path) -> list[Path]:
    """One PNG per scenario with a peer: bars of ours against the peer.  Empty when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    s = {name: outcome for name, outcome in results["scenarios"].items() if "error" not in outcome}
    written: list[Path] = []

    def bars(name: str, title: str, groups: list[str], series: dict[str, list[float]], ylabel: str,
             log: bool = False) -> None:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        width = 0.8 / max(1, len(series))
        for index, (label, values) in enumerate(series.items()):
            positions = [g + index * width for g in range(len(groups))]
            ax.bar(positions, [v if v is not None else 0 for v in values], width, label=label)
        ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups, fontsize=8)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.set_title(f"{title}\n{results['date']}, {results['machine']['cores']} cores", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    if "layer" in s:
        layer = s["layer"]
        keys = ["send", "receive", "request_reply", "group"]
        bars("layer", "Channel layer operations/s (higher is better)", ["send", "receive", "request/reply", "group deliveries"],
             {"paas-channels (sync)": [layer["paas_sync"][k] for k in keys],
              "paas-channels (async)": [layer["paas_async"][k] for k in keys],
              "channels_redis 4": [layer["channels_redis"][k] for k in keys]}, "operations/s", log=True)
    if "http" in s:
        http = s["http"]["results"]
        names = list(http)
        short = {"combined": "combined", "combined_direct": "combined\n--http direct", "split_1": "split\nweb + 1 worker",
                 "split_2": "split\nweb + 2 workers", "daphne_asgi": "Daphne +\nDjango ASGI", "gunicorn": "gunicorn\n2 workers"}
        groups = [short.get(n, n) for n in names]
        bars("http", "HTTP requests/s, small Django view (higher is better)", groups,
             {"requests/s": [http[n]["throughput"]["requests_per_s"] for n in names]}, "requests/s")
        bars("http_latency", f"HTTP p99 ms at {s['http']['rate']:.0f} requests/s (lower is better)", groups,
             {"p99 ms": [http[n]["fixed_rate"]["latency_ms"]["p99"] for n in names]}, "ms", log=True)
    if "broadcast" in s:
        b = s["broadcast"]
        bars("broadcast", f"Broadcast to {b['ours']['clients']:,} WebSockets: latency ms (lower is better)",
             ["p50", "p99", "max"],
             {"paas-channels split": [b["ours"]["latency_ms"][k] for k in ("p50", "p99", "max")],
              "Channels 4 + channels_redis": [b["channels4"]["latency_ms"][k] for k in ("p50", "p99", "max")]},
             "ms", log=True)
    if "memory" in s:
        mem = s["memory"]
        bars("memory", "Web process RSS per idle WebSocket, KiB (lower is better)", ["KiB per connection"],
             {"paas-channels run web": [mem["ours"]["kib_per_connection"]],
              "Daphne + Channels 4": [mem["channels4"]["kib_per_connection"]]}, "KiB")
    return written


### README ###


def _replace(content: str, marker: str, text: str) -> str:
    pattern = re.compile(rf"(<!-- bench:{marker} -->\n).*?(<!-- /bench:{marker} -->)", re.S)
    if not pattern.search(content):
        print(f"README.md has no bench:{marker} markers; that table was not written", flush=True)
        return content
    return pattern.sub(lambda match: match.group(1) + text + "\n" + match.group(2), content)


def write_readme(results: dict, table: str) -> None:
    """The full run's tables into README: bench:all, and the layer and HTTP tables from the same run."""
    content = README.read_text()
    content = _replace(content, "all", table)
    for name, text in detail_tables(results).items():
        content = _replace(content, name, text)
    README.write_text(content)


def detail_tables(results: dict) -> dict[str, str]:
    """bench/layer.py's, bench/layer_rabbitmq.py's and bench/http.py's own tables, from this run's figures."""
    from bench import http, layer, layer_rabbitmq

    s = {name: outcome for name, outcome in results["scenarios"].items() if "error" not in outcome}
    tables = {}
    if "layer" in s:
        tables["layer"] = layer.table(s["layer"])
    if "layer-rabbitmq" in s:
        tables["layer-rabbitmq"] = layer_rabbitmq.table(s["layer-rabbitmq"])
    if "http" in s:
        h = s["http"]
        labels = {name: result["label"] for name, result in h["results"].items()}
        args = argparse.Namespace(duration=h["duration_s"], rate=h["rate"], rounds=h["rounds"])
        tables["http"] = http.report(h["results"], labels, args)
    return tables


def write_details(results: dict, out: Path) -> None:
    """layer.json/.md and http.json/.md next to latest.*, so that every file in the folder is from one run."""
    titles = {"layer": "# Channel layer benchmark\n\n", "layer-rabbitmq": "# RabbitMQ channel layer benchmark\n\n",
              "http": ""}
    for name, text in detail_tables(results).items():
        stem = name.replace("-", "_")  # bench/layer_rabbitmq.py's own file names
        (out / f"{stem}.json").write_text(json.dumps(results["scenarios"][name], indent=2) + "\n")
        (out / f"{stem}.md").write_text(titles[name] + text + "\n")
