"""The run's figures per fault window, the summary table and the timeline plot."""

import statistics

SLOW = 60.0  # seconds of delay that make a fault worth naming


def in_window(message, start, end):
    """A message belongs to a fault when it was first sent or accepted while the fault lasted."""
    accepted = message["accepted"]
    return start <= message["created"] <= end or (accepted is not None and start <= accepted <= end)


def window_stats(messages, reads, start, end):
    delays = [m["verdict"]["delay"] for m in messages if m["verdict"]["delay"] is not None]
    totals = [m["verdict"]["total_delay"] for m in messages if m["verdict"]["total_delay"] is not None]
    statuses = [m["verdict"]["status"] for m in messages]
    attempts = [a for m in messages for a in m["attempts"] if start <= a["start"] <= end]
    window_reads = [r for r in reads if start <= r["start"] <= end]
    return {
        "sent": sum(1 for m in messages if start <= m["created"] <= end),
        "accepted": sum(1 for m in messages if m["accepted"] is not None),
        "delivered": statuses.count("delivered"),
        "duplicated": sum(1 for m in messages if m["verdict"]["duplicates"] or m["verdict"]["misplaced"]),
        "lost": statuses.count("lost"),
        "queued": statuses.count("queued"),
        "unsent": statuses.count("unsent"),
        "unacknowledged": statuses.count("unacknowledged"),
        "wrong_folder": sum(1 for m in messages if m["verdict"]["wrong_folder"]),
        "rejected_5xx": statuses.count("rejected"),
        "refused_attempts": sum(1 for a in attempts if a["outcome"] in ("refused", "connection")),
        "reads": len(window_reads),
        "read_errors": sum(1 for r in window_reads if not r["ok"]),
        "median_delay": statistics.median(delays) if delays else None,
        "max_delay": max(delays) if delays else None,
        "max_total_delay": max(totals) if totals else None,
        "errors_sample": sorted({a["error"] for a in attempts if a["error"]} |
                                {r["error"] for r in window_reads if r["error"]})[:5],
    }


def windows(messages, reads, faults, run_start, run_end):
    """One row per injected fault, one for the time outside every fault, one for the whole run."""
    rows = []
    injected = [f for f in faults if f.get("start") is not None]
    for fault in injected:
        members = [m for m in messages if in_window(m, fault["start"], fault["end"])]
        rows.append({"name": fault["name"], **window_stats(members, reads, fault["start"], fault["end"])})
    outside = [m for m in messages if not any(in_window(m, f["start"], f["end"]) for f in injected)]
    quiet_reads = [r for r in reads if not any(f["start"] <= r["start"] <= f["end"] for f in injected)]
    rows.append({"name": "(no fault)", **window_stats(outside, quiet_reads, run_start, run_end)})
    rows.append({"name": "(whole run)", **window_stats(messages, reads, run_start, run_end)})
    return rows


def slow_faults(rows):
    """Faults whose messages waited more than SLOW seconds from first try to delivery."""
    return [(row["name"], row["max_total_delay"]) for row in rows if not row["name"].startswith("(")
            and (row["max_total_delay"] or 0) > SLOW]


def _fmt(value):
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def table(rows, faults):
    header = ("fault window", "sent", "accepted", "delivered", "dup", "lost", "queued", "not INBOX", "median s",
              "max s", "max e2e s", "5xx", "refused", "read err")
    lines = [header]
    keys = ("sent", "accepted", "delivered", "duplicated", "lost", "queued", "wrong_folder", "median_delay",
            "max_delay", "max_total_delay", "rejected_5xx", "refused_attempts")
    for row in rows:
        lines.append((row["name"], *(_fmt(row[k]) for k in keys), f"{row['read_errors']}/{row['reads']}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text.append("delay: acceptance (250 after DATA) to the file in the Maildir; e2e: first try to the file; "
                "refused: tries answered 4xx or cut off (tried again later); read err: failed/all POP3+IMAP logins; "
                "not INBOX: a copy filed elsewhere (Junk: the spam check called the ham spam)")
    skipped = [f for f in faults if f.get("skipped")]
    for fault in skipped:
        text.append(f"skipped {fault['name']}: {fault['skipped']}")
    for fault in faults:
        if fault.get("problems"):
            text.append(f"{fault['name']}: not recovered after repair: {'; '.join(fault['problems'])}")
    slow = slow_faults(rows)
    text.append("faults that cost more than 60 s of delay: " +
                (", ".join(f"{name} (max {delay:.0f} s)" for name, delay in slow) if slow else "none"))
    return "\n".join(text)


def timeline(results, path, log):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("plot: matplotlib is not importable, no timeline (requirements.txt: matplotlib)")
        return
    start = results["run"]["start"]
    messages = results["messages"]
    figure, axes = plt.subplots(figsize=(13, 5.5))
    floor = 0.01  # log scale: a delay under 10 ms is drawn at 10 ms
    for kind, colour in (("inbound", "#1f77b4"), ("submission", "#2ca02c")):
        own = [m for m in messages if m["kind"] == kind and m["verdict"]["delay"] is not None]
        first_try = [m for m in own if len(m["attempts"]) == 1]
        retried = [m for m in own if len(m["attempts"]) > 1]
        axes.scatter([m["accepted"] - start for m in first_try], [max(floor, m["verdict"]["delay"]) for m in first_try],
                     s=8, color=colour, label=f"{kind}: acceptance to Maildir")
        axes.scatter([m["created"] - start for m in retried],
                     [max(floor, m["verdict"]["total_delay"]) for m in retried], s=22, facecolors="none",
                     edgecolors=colour, label=f"{kind}, refused first: first try to Maildir")
    top = max([m["verdict"]["total_delay"] or 0 for m in messages] + [10]) * 1.5
    bad = [m for m in messages if m["verdict"]["status"] in ("lost", "queued")
           or m["verdict"]["duplicates"] or m["verdict"]["misplaced"]]
    if bad:
        axes.scatter([(m["accepted"] or m["created"]) - start for m in bad], [top] * len(bad), marker="x", s=40,
                     color="#d62728", label="lost, still queued or duplicated")
    failed_reads = [r for r in results["reads"] if not r["ok"]]
    if failed_reads:
        axes.scatter([r["start"] - start for r in failed_reads], [floor * 0.7] * len(failed_reads), marker="|", s=60,
                     color="#9467bd", label="failed POP3/IMAP login")
    for index, fault in enumerate(f for f in results["faults"] if f.get("start") is not None):
        axes.axvspan(fault["start"] - start, fault["end"] - start, color="#ff7f0e" if index % 2 else "#ffbb78",
                     alpha=0.3, lw=0)
        axes.text((fault["start"] + fault["end"]) / 2 - start, top * 1.3, fault["name"], rotation=90, ha="center",
                  va="top", fontsize=8)
    axes.set_yscale("log")
    axes.set_ylim(floor * 0.5, top * 2.5)
    axes.set_xlabel("seconds since the start of the run (acceptance; first try for refused messages)")
    axes.set_ylabel("delivery delay, seconds (log)")
    axes.set_title(f"Delivery delay under faults: run {results['run']['runid']}, {results['run']['started']}, "
                   f"{results['run']['options']['rate']} msg/s")
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    log(f"plot: {path}")
