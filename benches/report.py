"""Turns benches/results/*.jsonl (written by benches/run.sh) into the tables of RESULTS.md
(markdown on stdout: medians of the runs, and ratios chatd / peer) and PNG plots in
benches/results/. Usage: benches/.plot-venv/bin/python benches/report.py"""
import collections
import json
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"


def load(name, sub=""):
    path = RESULTS / sub / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def group(rows):
    """label without the trailing /runN → rows"""
    out = collections.OrderedDict()
    for r in rows:
        key = r["label"].rsplit("/run", 1)[0]
        out.setdefault(key, []).append(r)
    return out


def med(rows, f):
    vals = [f(r) for r in rows]
    return statistics.median(vals) if vals else float("nan")


def fmt(x, unit=""):
    if x != x:  # NaN
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}{unit}"
    return f"{x:.2f}{unit}"


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def s1():
    g = group(load("s1"))
    if not g:
        return
    print("### S1 — idle authenticated connections\n")
    rows = []
    for key, rs in g.items():
        rows.append([
            key.split("/")[1], str(len(rs)), fmt(med(rs, lambda r: r["connections"])),
            fmt(med(rs, lambda r: r["setup_conns_per_s"])),
            fmt(med(rs, lambda r: r["server_rss_kib_idle"] / 1024), " MiB"),
            fmt(med(rs, lambda r: r["rss_per_conn_kib"]), " KiB"),
            fmt(med(rs, lambda r: r["errors"])),
        ])
    table(["system", "runs", "connections held", "setup (conns/s)", "server RSS", "RSS per connection", "errors"], rows)


def s2(sub="", title="### S2 — fan-out"):
    g = group(load("s2", sub))
    if not g:
        return
    print(title + "\n")
    rows = []
    for key, rs in g.items():
        _, shape, system = key.split("/")
        rows.append([
            shape, system, str(len(rs)), fmt(med(rs, lambda r: r["deliveries_per_s"])),
            fmt(med(rs, lambda r: r["server_cpu_s"]), " s"),
            fmt(med(rs, lambda r: r["deliveries_per_cpu_s"])),
            fmt(med(rs, lambda r: r.get("client_cpu_s", float("nan"))), " s"),
            fmt(med(rs, lambda r: r["latency_us"]["p50"] / 1000), " ms"),
            fmt(med(rs, lambda r: r["latency_us"]["p99"] / 1000), " ms"),
            fmt(med(rs, lambda r: r["lost"])), fmt(med(rs, lambda r: r["duplicated"])),
        ])
    table(["shape", "system", "runs", "deliveries/s", "server CPU", "deliveries per CPU-s", "client CPU", "p50", "p99", "lost", "dup"], rows)
    ratios = []
    for shape in ("1x1000", "100x50"):
        c = g.get(f"s2/{shape}/chatd")
        for peer in ("socketio", "nats"):
            p = g.get(f"s2/{shape}/{peer}")
            if c and p:
                ratios.append([shape, f"chatd / {peer}",
                               fmt(med(c, lambda r: r["deliveries_per_cpu_s"]) / med(p, lambda r: r["deliveries_per_cpu_s"]), "×")])
    if ratios:
        table(["shape", "ratio", "deliveries per CPU-second"], ratios)
    if not sub:
        plot_bars(g)


def latency_rows(g):
    rows = []
    for key, rs in g.items():
        _, system, rate = key.split("/")
        offered = int(rate.removeprefix("rate")) * 50
        rows.append([
            system, f"{offered:,}", str(len(rs)), fmt(med(rs, lambda r: r["deliveries_per_s"])),
            fmt(med(rs, lambda r: r["latency_us"]["p50"] / 1000), " ms"),
            fmt(med(rs, lambda r: r["latency_us"]["p99"] / 1000), " ms"),
            fmt(med(rs, lambda r: r["latency_us"]["p999"] / 1000), " ms"),
            fmt(med(rs, lambda r: r["latency_us"]["max"] / 1000), " ms"),
            fmt(med(rs, lambda r: r.get("send_lag_us", {}).get("p99", float("nan")) / 1000), " ms"),
            fmt(med(rs, lambda r: r["server_cpu_s"]), " s"),
            fmt(med(rs, lambda r: r.get("client_cpu_s", float("nan"))), " s"),
            fmt(med(rs, lambda r: r["deliveries_per_cpu_s"])),
            fmt(med(rs, lambda r: r["lost"])),
        ])
    return rows


LATENCY_HEADER = ["system", "offered deliveries/s", "runs", "achieved/s", "p50", "p99", "p99.9", "max",
                  "send lag p99", "server CPU", "client CPU", "deliveries per server CPU-s", "lost"]


def s0():
    g = group(load("s0"))
    if not g:
        return
    print("### S0 — calibration: the instrument against a trivial relay and nats-server (pinned)\n")
    table(LATENCY_HEADER, latency_rows(g))


def s3(sub="", title="### S3 — latency vs offered load (100 rooms × 50 members, server and client pinned)"):
    g = group(load("s3", sub))
    if not g:
        return
    print(title + "\n")
    table(LATENCY_HEADER, latency_rows(g))
    if not sub:
        plot_latency(g)


def before_after(old_dir="before", new_dir="", title="### Before and after this round's server changes (same instrument, medians)"):
    """The same build of the instrument against chatd before and after a round's changes."""
    rows = []
    for name in ("s2", "s3", "s5"):
        old, new = group(load(name, old_dir)), group(load(name, new_dir))
        for key, before in old.items():
            after = new.get(key)
            if not after:
                continue
            if name == "s2":
                fig = lambda r: r["deliveries_per_cpu_s"]
                what = f"{key.split('/')[1]}: deliveries per server CPU-s"
                lat = lambda r: r["latency_us"]["p99"] / 1000
            elif name == "s3":
                fig = lambda r: r["deliveries_per_cpu_s"]
                what = f"{key.split('/')[2].removeprefix('rate')} msgs/s × 50: deliveries per server CPU-s"
                lat = lambda r: r["latency_us"]["p99"] / 1000
            else:
                fig = lambda r: r["acks_per_s"]
                what = f"{key.split('/')[1].removeprefix('senders')} senders: acked messages/s"
                lat = lambda r: r["ack_latency_us"]["p99"] / 1000
            b, a = med(before, fig), med(after, fig)
            rows.append([name.upper(), what, fmt(b), fmt(a), fmt(a / b, "×") if b else "–",
                         fmt(med(before, lat), " ms"), fmt(med(after, lat), " ms")])
    if rows:
        print(title + "\n")
        table(["scenario", "figure", "before", "after", "ratio", "p99 before", "p99 after"], rows)


def s4():
    g = group(load("s4"))
    if not g:
        return
    print("### S4 — core scaling: chatd --shards 1 vs --shards 2 (100 rooms × 50 members)\n")
    rows = []
    for key, rs in g.items():
        _, shards, rate = key.split("/")
        offered = int(rate.removeprefix("rate")) * 50
        rows.append([
            shards.removeprefix("shards"), f"{offered:,}", str(len(rs)),
            fmt(med(rs, lambda r: r["deliveries_per_s"])),
            fmt(med(rs, lambda r: r["deliveries_per_cpu_s"])),
            fmt(med(rs, lambda r: r["latency_us"]["p99"] / 1000), " ms"),
            " / ".join(str(x) for x in rs[0].get("sessions_per_shard", [])),
            fmt(med(rs, lambda r: r["lost"])),
        ])
    table(["shards", "offered deliveries/s", "runs", "achieved/s", "deliveries per CPU-s", "p99", "sessions per shard (run 1)", "lost"], rows)
    plot_scaling(g)


def s5(sub="", title="### S5 — durable writes (each sender waits for its ack)"):
    g = group(load("s5", sub))
    if not g:
        return
    print(title + "\n")
    rows = []
    for key, rs in g.items():
        senders = key.split("/")[1].removeprefix("senders")
        rows.append([
            senders, str(len(rs)), fmt(med(rs, lambda r: r["acks_per_s"])),
            fmt(med(rs, lambda r: r["ack_latency_us"]["p50"] / 1000), " ms"),
            fmt(med(rs, lambda r: r["ack_latency_us"]["p99"] / 1000), " ms"),
            fmt(med(rs, lambda r: r["ack_latency_us"]["max"] / 1000), " ms"),
            fmt(med(rs, lambda r: r["server_cpu_s"]), " s"),
        ])
    table(["senders", "runs", "acked messages/s", "ack p50", "ack p99", "ack max", "server CPU"], rows)


def s6():
    rows = load("s6")
    if not rows:
        return
    print("### S6 — restart storm (5,000 clients, SIGTERM, a new server on the same data)\n")
    by = collections.OrderedDict()
    for r in rows:
        by.setdefault(r["spread_ms"], []).append(r)
    out = []
    for spread, rs in by.items():
        out.append([
            f"{spread} ms", str(len(rs)),
            f"{int(med(rs, lambda r: r['back_and_complete']))} / {rs[0]['clients']}",
            fmt(med(rs, lambda r: r["all_back_after_s"]), " s"),
            fmt(med(rs, lambda r: r["login_ms"]["p50"]), " ms") + " / " + fmt(med(rs, lambda r: r["login_ms"]["p99"]), " ms"),
            fmt(med(rs, lambda r: r["reconnects_per_s"])),
            fmt(med(rs, lambda r: r["new_server_cpu_s"]), " s"),
        ])
    table(["reconnect spread", "runs", "back with every message", "all back after", "login p50 / p99", "reconnects/s", "new server CPU"], out)


def s7(sub="", title="### S7 — the seed deployment's mixed load (1,000 connected users, 5 minutes)"):
    rows = load("s7", sub)
    if not rows:
        return
    print(title + "\n")
    out = []
    for i, r in enumerate(rows, 1):
        d, m = r["delivery_latency_us"], r["method_latency_us"]
        out.append([
            str(i), fmt(r["messages_per_s"]), f"{r['deliveries']:,}", str(r["reconnects"]), str(r["errors"]),
            fmt(r["server_cpu_pct_of_one_core"], " %"), fmt(r["server_rss_kib_peak"] / 1024, " MiB"),
            " / ".join(fmt(d[k] / 1000, " ms") for k in ("p50", "p99", "p999")),
            " / ".join(fmt(m[k] / 1000, " ms") for k in ("p50", "p99", "p999")),
            fmt(r["client_cpu_s"], " s"),
        ])
    med_row = ["median"] + ["" for _ in range(9)]
    med_row[5] = fmt(med(rows, lambda r: r["server_cpu_pct_of_one_core"]), " %")
    med_row[6] = fmt(med(rows, lambda r: r["server_rss_kib_peak"] / 1024), " MiB")
    med_row[7] = " / ".join(fmt(med(rows, lambda r: r["delivery_latency_us"][k] / 1000), " ms") for k in ("p50", "p99", "p999"))
    med_row[8] = " / ".join(fmt(med(rows, lambda r: r["method_latency_us"][k] / 1000), " ms") for k in ("p50", "p99", "p999"))
    out.append(med_row)
    table(["run", "messages/s", "deliveries", "reconnects", "errors", "server CPU (of one core)", "server RSS peak",
           "delivery p50 / p99 / p99.9", "method p50 / p99 / p99.9", "client CPU"], out)
    kinds = collections.OrderedDict()
    for r in rows:
        for k, v in r["method_latency_by_kind_us"].items():
            kinds.setdefault(k, []).append(v)
    table(["method", "calls (median of runs)", "p50", "p99", "p99.9"], [
        [k, fmt(statistics.median(v["count"] for v in vs)),
         fmt(statistics.median(v["p50"] for v in vs) / 1000, " ms"),
         fmt(statistics.median(v["p99"] for v in vs) / 1000, " ms"),
         fmt(statistics.median(v["p999"] for v in vs) / 1000, " ms")] for k, vs in kinds.items()])


def plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as p
        return p
    except ImportError:
        print("(matplotlib not installed: no plots; run benches/peers/install.sh)", file=sys.stderr)
        return None


def plot_latency(g):
    p = plt()
    if not p:
        return
    fig, ax = p.subplots(figsize=(7, 4.5))
    series = collections.defaultdict(list)
    for key, rs in g.items():
        _, system, rate = key.split("/")
        offered = int(rate.removeprefix("rate")) * 50
        series[system].append((offered, med(rs, lambda r: r["latency_us"]["p50"] / 1000),
                               med(rs, lambda r: r["latency_us"]["p99"] / 1000)))
    for system, pts in series.items():
        pts.sort()
        xs = [x for x, _, _ in pts]
        line, = ax.plot(xs, [y for _, y, _ in pts], marker="o", label=f"{system} p50")
        ax.plot(xs, [y for _, _, y in pts], marker="x", linestyle="--", color=line.get_color(), label=f"{system} p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered deliveries per second")
    ax.set_ylabel("send → receive latency (ms)")
    ax.set_title("S3: latency vs offered load (100 rooms × 50 members, medians)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "latency_vs_load.png", dpi=110)


def plot_bars(g):
    p = plt()
    if not p:
        return
    fig, ax = p.subplots(figsize=(7, 4))
    labels, vals = [], []
    for key, rs in g.items():
        _, shape, system = key.split("/")
        labels.append(f"{system}\n{shape}")
        vals.append(med(rs, lambda r: r["deliveries_per_cpu_s"]))
    ax.bar(range(len(vals)), vals)
    ax.set_xticks(range(len(vals)), labels, fontsize=8)
    ax.set_ylabel("deliveries per server CPU-second")
    ax.set_title("S2: fan-out efficiency (medians)")
    fig.tight_layout()
    fig.savefig(RESULTS / "deliveries_per_cpu.png", dpi=110)


def plot_scaling(g):
    p = plt()
    if not p:
        return
    fig, ax = p.subplots(figsize=(7, 4))
    series = collections.defaultdict(list)
    for key, rs in g.items():
        _, shards, rate = key.split("/")
        series[shards].append((int(rate.removeprefix("rate")) * 50, med(rs, lambda r: r["deliveries_per_s"])))
    for shards, pts in sorted(series.items()):
        pts.sort()
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=shards.replace("shards", "--shards "))
    ax.plot([x for x, _ in pts], [x for x, _ in pts], linestyle=":", color="grey", label="offered")
    ax.set_xlabel("offered deliveries per second")
    ax.set_ylabel("achieved deliveries per second")
    ax.set_title("S4: chatd core scaling (medians)")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "s4_scaling.png", dpi=110)


def s7_compare(dirs, title):
    """S7 medians of several builds side by side: (results subdirectory, what it is)."""
    cols = [(name, load("s7", sub)) for sub, name in dirs]
    cols = [(n, rows) for n, rows in cols if rows]
    if len(cols) < 2:
        return
    figs = [
        ("runs", lambda r: 1, lambda rows: str(len(rows))),
        ("server CPU (of one core)", lambda r: r["server_cpu_pct_of_one_core"], None),
        ("delivery p50", lambda r: r["delivery_latency_us"]["p50"] / 1000, None),
        ("delivery p99", lambda r: r["delivery_latency_us"]["p99"] / 1000, None),
        ("delivery p99.9", lambda r: r["delivery_latency_us"]["p999"] / 1000, None),
        ("method p99", lambda r: r["method_latency_us"]["p99"] / 1000, None),
        ("sendMessage p99", lambda r: r["method_latency_by_kind_us"]["sendMessage"]["p99"] / 1000, None),
        ("typing p99", lambda r: r["method_latency_by_kind_us"]["typing"]["p99"] / 1000, None),
    ]
    print(title + "\n")
    out = []
    for label, f, show in figs:
        unit = " %" if "CPU" in label else ("" if label == "runs" else " ms")
        out.append([label] + [show(rows) if show else fmt(med(rows, f), unit) for _, rows in cols])
    table(["figure (median)"] + [n for n, _ in cols], out)


def journal_round():
    """The write-journal round: results/journal (the journal with checkpoints in lulls),
    results/journal-2s (the journal checkpointing every 2 s only), results/journal-before (408d140)."""
    s2("journal", "### S2 — fan-out, journal round")
    s3("journal", "### S3 — latency vs offered load, journal round (pinned)")
    s5("journal", "### S5 — durable writes, journal round")
    s7("journal", "### S7 — the seed deployment's mixed load, journal round")
    before_after("journal-before", "journal-2s",
                 "### Before and after the journal, checkpoints every 2 s (2026-11-23, one session, medians)")
    s7_compare([("journal-before", "before (408d140)"), ("journal-2s", "journal, checkpoint every 2 s"),
                ("journal", "journal, checkpoints in lulls")],
               "### S7 before and after the journal round (2026-12-01, one session, medians)")
    before_after("lull-ab2/off", "lull-ab2/on",
                 "### S3 and S5 without and with checkpoints in lulls (2026-12-01, interleaved runs, medians)")
    before_after("lull-ab/off", "lull-ab/on",
                 "### S5 without and with checkpoints in lulls, one build tuned by environment (2026-12-01, interleaved)")


if __name__ == "__main__":
    for f in (s0, s1, s2, s3, s4, s5, before_after, s6, s7, journal_round):
        f()
