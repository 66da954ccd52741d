"""The side-by-side table and the plots (matplotlib, off-screen)."""

LABELS = {
    "bare": "bare Postfix -> smtp-sink",
    "hops": "six Postfix hops -> smtp-sink",
    "platform": "platform (lb1 -> Maildir)",
    "amavis": "Postfix+amavis+SA+ClamAV",
    "rspamd": "Postfix+rspamd+clamav-milter",
}

COLOURS = {"bare": "#999999", "hops": "#bbbbbb", "platform": "#1f77b4", "amavis": "#d62728", "rspamd": "#ff7f0e"}
# The platform's units named under the table (report.json has every unit above 0.05 ms/msg).
UNITS_SHOWN = 12


def _fmt(value, digits=3):
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(results):
    rows = [("configuration", "msg/s", "vs bare", "CPU s/msg", "p50 1-by-1", "p99 1-by-1", "p50 80%", "p99 80%",
             "e2e p99 80%", "lost/dup of accepted")]
    for name, entry in results["throughput"].items():
        latency = results["latency"].get(name, {})
        light, loaded = latency.get("light", {}), latency.get("load_80", {})
        loss = results["loss"].get(name)
        rows.append((LABELS.get(name, name), _fmt(entry["median_msgs_per_s"], 1), _fmt(entry["ratio_to_bare"]),
                     _fmt(entry["cpu_s_per_message_total"], 4), _fmt(light.get("p50_s")), _fmt(light.get("p99_s")),
                     _fmt(loaded.get("p50_s")), _fmt(loaded.get("p99_s")),
                     _fmt(loaded.get("end_to_end", {}).get("p99_s")),
                     f"{loss['lost']}/{loss['duplicates']} of {loss['accepted']}" if loss else "n/a"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width)
                       in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("latency in seconds: acceptance (250 to the final dot) to the file in Maildir; e2e from the "
                 "client's connect (milters scan before the 250, the platform after it)")
    platform = results["throughput"].get("platform")
    if platform:
        lines.append("")
        lines.append("platform CPU s/msg by tier: " + ", ".join(f"{tier} {value:.4f}" for tier, value
                                                               in platform["cpu_s_per_message"].items()))
        units = sorted(((value, f"{tier}/{unit}") for tier, per_unit in
                        platform.get("cpu_s_per_message_by_unit", {}).items() for unit, value in per_unit.items()),
                       reverse=True)[:UNITS_SHOWN]
        if units:
            lines.append(f"platform CPU ms/msg, top {len(units)} units: "
                         + ", ".join(f"{name} {value * 1000:.2f}" for value, name in units))
    for proto, entry in results["sessions"].items():
        lines.append(f"{proto} via lb1: {entry['sessions_per_s']} sessions/s ({entry['failures']} failed); CPU s "
                     + ", ".join(f"{tier} {value:.2f}" for tier, value in entry["cpu_s"].items()))
    for key, label in (("platform_vs_hops", "six bare hops"), ("platform_vs_amavis", "the amavis peer")):
        if key in results:
            lines.append(f"platform against {label}: {results[key]}x")
    lines.append("tier_costs: " + ", ".join(f"{k}={_fmt(v, 5)}" for k, v in results["tier_costs"].items()))
    for check, ok in results.get("targets_design_6", {}).items():
        lines.append(f"design 6 target {check}: {'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def plots(results, output, log):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        log("plots: matplotlib is not importable, no plots (requirements.txt: matplotlib)")
        return
    names = list(results["throughput"])
    rates = [results["throughput"][n]["median_msgs_per_s"] for n in names]
    figure, axes = plt.subplots(figsize=(10, 5))
    bars = axes.bar([LABELS.get(n, n).replace(" (", "\n(").replace(" -> smtp", "\n-> smtp").replace("+", "+\n", 1)
                     for n in names], rates, color=[COLOURS.get(n, "#777777") for n in names])
    # The design's targets for the platform, where their reference ran.
    throughput = results["throughput"]
    targets = sorted((throughput[reference]["median_msgs_per_s"] * factor, label) for reference, factor, label
                     in (("bare", 0.15, "target 0.15x bare"), ("amavis", 5, "target 5x amavis"))
                     if reference in throughput and "platform" in throughput)
    for number, (level, label) in enumerate(targets):
        axes.axhline(level, linestyle="--", linewidth=1, color=COLOURS["platform"])
        # Left of the first bar, the lower label under its line, the higher one above.
        axes.annotate(label, (-0.45, level), ha="left", va="top" if number == 0 and len(targets) > 1 else "bottom",
                      fontsize=8, color=COLOURS["platform"])
    for bar, name in zip(bars, names):
        ratio = results["throughput"][name]["ratio_to_bare"]
        axes.annotate(f"{bar.get_height():.0f} msg/s" + (f"\n{ratio:.3f}x bare" if ratio is not None else ""),
                      (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=9)
    axes.set_ylabel("messages per second (median of rounds)")
    axes.set_title(f"Throughput, same run ({results['run']['started']}, {results['run']['host_cpus']} shared CPUs)")
    axes.set_ylim(0, max(rates) * 1.25)
    figure.tight_layout()
    figure.savefig(output / "throughput.png", dpi=110)
    plt.close(figure)

    figure, panes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    styles = {"p50_s": "-", "p95_s": "--", "p99_s": ":"}
    for axes, which, title in ((panes[0], None, "acceptance to Maildir"),
                               (panes[1], "end_to_end", "client connect to Maildir")):
        for name, phases in results["latency"].items():
            points = sorted(((p["offered_msgs_per_s"], p[which] if which else p) for p in phases.values()),
                            key=lambda point: point[0])
            for key, style in styles.items():
                xy = [(x, p[key]) for x, p in points if p[key] is not None]
                axes.plot([x for x, _ in xy], [max(y, 1e-3) for _, y in xy], style, marker="o",
                          color=COLOURS.get(name), label=f"{name} {key[:3]}")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(ticker.NullFormatter())
        axes.set_xlabel("offered load, msg/s (one at a time; fixed rate at shares of capacity)")
        axes.set_title(f"Latency: {title}")
        axes.grid(True, which="both", alpha=0.3)
    panes[0].set_ylabel("seconds")
    panes[1].legend(fontsize=8, ncol=3)
    figure.tight_layout()
    figure.savefig(output / "latency.png", dpi=110)
    plt.close(figure)
    log(f"plots: {output / 'throughput.png'}, {output / 'latency.png'}")
