#!/usr/bin/env python3
"""The platform against the alternatives, side by side, in one run (`make bench`).

    .venv/bin/python tests/bench/side_by_side [--round-seconds 15] [--rounds 2] [--configs bare,platform,...]

Configurations (docs/benchmarks.md has the details):
    bare      stock Postfix relaying to smtp-sink (the ceiling)
    hops      the same Postfix, each message through six SMTP hops, then smtp-sink (the
              floor of the platform's hop count)
    platform  the lab: lb1:25 -> spamcheck -> six Postfix instances with ClamAV -> LMTP to Maildir
    amavis    Postfix + amavisd-new + SpamAssassin + clamd in one container, to Maildir
    rspamd    one Postfix with the rspamd milter and clamav-milter, to Maildir

Phases: setup (bench image, source and peer containers on the lab network), idle CPU,
POP3/IMAP sessions through lb1, interleaved throughput rounds (smtp-source, 20 sessions,
4 KB), latency one message at a time and at a fixed rate of --load-shares of each
configuration's measured capacity, then artifacts/bench/report.json, throughput.png,
latency.png. Every container this starts is labelled ispmail.lab=<lab> and removed at the end.
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]
import containers  # noqa: E402
import maildir  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402
import lab_inventory  # noqa: E402

CONFIGS = ["bare", "hops", "platform", "amavis", "rspamd"]
# Relays to smtp-sink: a round ends when the queue is empty; no Maildir, no latency phases.
TO_SINK = {"bare", "hops"}
# Messages of the first (calibration, warm-up) round; later rounds are sized from its rate.
CALIBRATION = {"bare": 1000, "hops": 300, "platform": 150, "amavis": 30, "rspamd": 200}
SENDER = "bench@example.net"


NOISE = set()


def log(message):
    """One progress line; also notes any ansible-playbook running on the host meanwhile (its
    modules run inside the lab's containers and count in their CPU)."""
    ps = containers.subprocess_run(["ps", "-eo", "args="]).stdout.splitlines()
    NOISE.update(" ".join(line.split()[1:4]) for line in ps if "ansible-playbook" in line and "python" in line)
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def lab_users(root):
    """The lab's accounts with their effective contracts; forwarding accounts left out (a
    forward adds deliveries to another mailbox, which would blur the counts)."""
    return {address: user for address, user in lab_inventory.accounts(root).items() if not user["forward_to"]}


def settle(progress, done, stall, interval=0.2):
    """Poll progress() until done(value); give up once the value has not changed for `stall` seconds.
    Returns (finished, value)."""
    last, changed = None, time.time()
    while True:
        value = progress()
        if done(value):
            return True, value
        if value != last:
            last, changed = value, time.time()
        elif time.time() - changed > stall:
            return False, value
        time.sleep(interval)


def split(total, parts):
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def percentile(values, share):
    ordered = sorted(values)
    if not ordered:
        return None
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Target:
    """One configuration: where mail goes in, where it lands, which containers do the work."""

    def __init__(self, name, smtp, maildirs, tiers):
        self.name, self.smtp, self.maildirs, self.tiers = name, smtp, maildirs, tiers

    def containers(self):
        return [c for members in self.tiers.values() for c in members]

    def clean(self, marker):
        for path in maildir.scan(self.maildirs.values(), marker):
            Path(path["path"]).unlink(missing_ok=True)


class PlatformTarget(Target):
    def __init__(self, lab, users):
        hosts, groups = lab["hosts"], lab["groups"]
        name = lambda host: hosts[host]["ansible_host"]  # noqa: E731
        store = Path(containers.podman("volume", "inspect", "--format", "{{.Mountpoint}}",
                                       f"{lab['lab_name']}-mailstore"))
        tiers = {"loadbalancer": [name(h) for h in groups["lb"]], "spamcheck": [name(h) for h in groups["spamcheck"]],
                 "gateway": [name(h) for h in groups["gateway"]], "mailbox": [name(h) for h in groups["mailbox"]],
                 "directory": [name(h) for h in groups["ldap"]]}
        super().__init__("platform", f"{hosts[groups['lb'][0]]['node_address']}:25",
                         {u: store / u.split("@")[1] / u.split("@")[0] / "Maildir" for u in users}, tiers)
        self.lab = lab
        self.pinned = {user: name(self._pinned_host(user)) for user in users}

    def _pinned_host(self, user):
        ldap = self.lab["hosts"][self.lab["groups"]["ldap"][0]]["ansible_host"]
        out = containers.sh(ldap, "ldapsearch -Q -LLL -Y EXTERNAL -H ldapi:/// -b ou=domains,dc=ispmail,dc=test "
                                  f"'(mail={user})' ispmailMailboxHost")
        return out.split("ispmailMailboxHost: ")[1].split()[0]

    def clean(self, marker):
        """doveadm expunge on the server that serves each user (the lab's own tool, the bench's own mail)."""
        for user, server in self.pinned.items():
            containers.sh(server, f"doveadm expunge -u {user} mailbox '*' header Message-ID {marker}", check=False)


class Bench:
    def __init__(self, args):
        self.args = args
        self.lab = lab_inventory.load()
        self.lab_name = self.lab["lab_name"]
        self.root = Path(self.lab["root"])
        self.runid = uuid.uuid4().hex[:8]
        self.marker = f"bench-{self.runid}.example.net"
        all_users = lab_users(self.root)
        self.users = {u: c for u, c in all_users.items() if u in args.recipients.split(",")} \
            if args.recipients else all_users
        self.no_check = [u for u, c in self.users.items() if not c["spam_check"] and not c["virus_check"]]
        self.started = []
        self.tmp = None
        self.targets = {}
        self.results = {"throughput": {}, "latency": {}, "sessions": {}, "loss": {}, "setup": {}}

    # --- setup -------------------------------------------------------------------------
    def setup(self):
        configs = self.args.configs
        containers.ensure_image(self.lab_name, self.args.rebuild_image, log=log)
        self.source = self._start("source")
        containers.podman("cp", str(HERE / "sender.py"), f"{self.source}:/usr/local/bin/bench-sender")
        containers.podman("cp", str(self.root / ".cache" / f"{self.lab_name}-pki" / "ca.crt"),
                          f"{self.source}:/usr/local/share/bench-ca.crt")
        if TO_SINK & set(configs):
            peers.start_bare(self.source)
            peers.started(self.source)
            self.bare_queue = Path(containers.podman("inspect", "--format", "{{.GraphDriver.Data.MergedDir}}",
                                                     self.source)) / "var/spool/postfix"
            for name, port in (("bare", 25), ("hops", peers.HOPS_PORTS[0])):
                if name in configs:
                    self.targets[name] = Target(name, f"127.0.0.1:{port}", {}, {name: [self.source]})
        if "platform" in configs:
            self.targets["platform"] = PlatformTarget(self.lab, self.users)
        self.tmp = Path(tempfile.mkdtemp(prefix="ispmail-bench-", dir="/var/tmp"))
        for name, start in (("amavis", self._start_amavis), ("rspamd", self._start_rspamd)):
            if name in configs:
                log(f"setup: {name} peer (packages from the bench image, signatures from the lab's gateway)")
                vmail = self.tmp / name
                vmail.mkdir()
                shutil.chown(vmail, peers.VMAIL_UID, peers.VMAIL_UID)
                container = self._start(name, volumes=[f"{vmail}:/var/vmail"])
                self.results["setup"][name] = start(container)
                peers.started(container)
                self.targets[name] = Target(name, f"{containers.address(container, self.lab_name)}:25",
                                            {u: vmail / u.split("@")[1] / u.split("@")[0] / "Maildir"
                                             for u in self.users}, {name: [container]})
        self.meter = containers.CpuMeter({c for t in self.targets.values() for c in t.containers()} | {self.source})

    def _start(self, role, volumes=()):
        name = containers.start(self.lab_name, role, volumes=volumes)
        self.started.append(name)
        return name

    def _start_amavis(self, container):
        return peers.start_amavis(self.lab, container, list(self.users), self.no_check, self.args.amavis_servers)

    def _start_rspamd(self, container):
        return peers.start_rspamd(self.lab, container, list(self.users), self.no_check)

    def teardown(self):
        containers.remove(*self.started)
        for target in self.targets.values():
            if isinstance(target, PlatformTarget):
                target.clean(self.marker)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- CPU -----------------------------------------------------------------------------
    def idle(self):
        seconds = self.args.idle_seconds
        before = self.meter.read()
        time.sleep(seconds)
        delta = self.meter.delta(before, self.meter.read())
        self.idle_rate = {c: max(0.0, v / seconds) for c, v in delta.items()}
        self.results["idle_cpu_per_s"] = {c: round(v, 4) for c, v in self.idle_rate.items()}

    def cpu_since(self, before, seconds):
        """CPU seconds per container since `before`, less what the container uses idle."""
        delta = self.meter.delta(before, self.meter.read())
        return {c: max(0.0, v - self.idle_rate.get(c, 0.0) * seconds) for c, v in delta.items()}

    @staticmethod
    def by_tier(target, cpu):
        return {tier: sum(cpu[c] for c in members) for tier, members in target.tiers.items()}

    # --- sessions ------------------------------------------------------------------------
    def sessions(self):
        platform = self.targets["platform"]
        lb = self.lab["hosts"][self.lab["groups"]["lb"][0]]["node_address"]
        users = ",".join(f"{u}:{c['password']}" for u, c in self.users.items())
        for proto, port in (("pop3", 110), ("imap", 143)):
            before, start = self.meter.read(), time.time()
            out = containers.sh(self.source, f"python3 /usr/local/bin/bench-sender sessions --proto {proto} "
                                             f"--target {lb}:{port} --users '{users}' --cafile /usr/local/share/bench-ca.crt "
                                             f"--concurrency {self.args.session_concurrency} --seconds {self.args.session_seconds}")
            result = json.loads(out)
            tiers = self.by_tier(platform, self.cpu_since(before, time.time() - start))
            result["sessions_per_s"] = round(result["sessions"] / result["seconds"], 1)
            result["cpu_s"] = {tier: round(v, 3) for tier, v in tiers.items()}
            self.results["sessions"][proto] = result
            log(f"sessions: {proto} via lb1 {result['sessions_per_s']}/s ({result['sessions']} sessions, "
                f"{result['failures']} failed, {self.args.session_concurrency} clients)")

    # --- throughput ----------------------------------------------------------------------
    def throughput_round(self, name, messages, label):
        target = self.targets[name]
        tag = f"bench {self.runid} {label}"
        sessions = self.args.sessions
        if name in TO_SINK:
            commands = [f"smtp-source -s {sessions} -l {self.args.size} -m {messages} -S '{tag}' -M {self.marker} "
                        f"-f {SENDER} -t sink@example.net {target.smtp}"]
        else:
            rcpts = list(self.users)
            commands = [f"smtp-source -s {s} -l {self.args.size} -m {m} -S '{tag} {rcpt}' -M {self.marker} "
                        f"-f {SENDER} -t {rcpt} {target.smtp}"
                        for rcpt, s, m in zip(rcpts, split(sessions, len(rcpts)), split(messages, len(rcpts))) if m]
        script = "rc=0; " + " ".join(f"{c} & p{i}=$!;" for i, c in enumerate(commands)) + " " + \
                 " ".join(f"wait $p{i} || rc=1;" for i in range(len(commands))) + " exit $rc"
        # Per unit on the platform's hosts, read outside the cgroup measurement below.
        units = {c: containers.unit_cpu(c) for c in target.containers()} if name == "platform" else None
        before, start = self.meter.read(), time.time()
        run = containers.subprocess_run(["podman", "exec", self.source, "sh", "-c", script])
        if run.returncode != 0:
            log(f"round: {name} smtp-source reported: {(run.stderr or run.stdout).strip()[-300:]}")
        if name in TO_SINK:
            end = containers.wait(lambda: not any(p.is_file() for d in ("maildrop", "incoming", "active", "deferred")
                                                   for p in (self.bare_queue / d).rglob("*")), 600, interval=0.1,
                                  what=f"{name} relay")
            found, duplicates = messages, 0
        else:
            # Counted by the round's tag: a late message of an earlier round must not end this one.
            complete, _ = settle(lambda: sum(1 for f in maildir.scan(target.maildirs.values(), self.marker)
                                             if tag in f["subject"]),
                                 lambda count: count >= messages, self.args.stall_seconds, interval=0.5)
            if not complete:
                log(f"round: {name} delivered nothing new for {self.args.stall_seconds:.0f} s, counting what arrived")
            files = [f for f in maildir.scan(target.maildirs.values(), self.marker) if tag in f["subject"]]
            found = len(files)
            end = max([f["ctime"] for f in files] + [start])
            duplicates = max(0, found - messages)
        seconds = end - start
        cpu = self.cpu_since(before, seconds)
        target_cpu = {c: cpu[c] for c in target.containers()}
        result = {"messages": messages, "seconds": round(seconds, 2), "msgs_per_s": round(messages / seconds, 1),
                  "found": found, "duplicates": duplicates, "cpu_s": {c: round(v, 3) for c, v in target_cpu.items()},
                  "source_cpu_s": round(cpu[self.source], 3) if name not in TO_SINK else None,
                  "smtp_source_errors": (run.stderr or "").strip()[-500:] if run.returncode else None}
        if units:
            result["unit_cpu_s"] = containers.unit_cpu_since(units)
        if name not in TO_SINK:
            target.clean(self.marker)
        return result

    def throughput(self):
        configs = [c for c in CONFIGS if c in self.targets]
        rates = {}
        for name in configs:
            result = self.throughput_round(name, CALIBRATION[name] if not self.args.quick else CALIBRATION[name] // 3,
                                           "warm-up")
            rates[name] = result["msgs_per_s"]
            self.results["throughput"][name] = {"warm_up": result, "rounds": []}
            log(f"warm-up: {name} {result['msgs_per_s']} msg/s ({result['messages']} messages)")
        for round_number in range(1, self.args.rounds + 1):
            for name in configs:
                messages = max(20, int(rates[name] * self.args.round_seconds))
                result = self.throughput_round(name, messages, f"round{round_number}")
                self.results["throughput"][name]["rounds"].append(result)
                found = "" if name in TO_SINK else f", {result['found']} found in Maildir"
                log(f"round {round_number}: {name} {result['msgs_per_s']} msg/s ({messages} messages{found})")
        bare = statistics.median(r["msgs_per_s"] for r in self.results["throughput"]["bare"]["rounds"]) \
            if "bare" in configs else None
        for name in configs:
            entry = self.results["throughput"][name]
            entry["median_msgs_per_s"] = round(statistics.median(r["msgs_per_s"] for r in entry["rounds"]), 1)
            entry["ratio_to_bare"] = round(entry["median_msgs_per_s"] / bare, 3) if bare else None
            messages = sum(r["messages"] for r in entry["rounds"])
            tiers = {}
            for r in entry["rounds"]:
                for tier, value in self.by_tier(self.targets[name], r["cpu_s"]).items():
                    tiers[tier] = tiers.get(tier, 0.0) + value
            entry["cpu_s_per_message"] = {tier: round(v / messages, 5) for tier, v in tiers.items()}
            entry["cpu_s_per_message_total"] = round(sum(tiers.values()) / messages, 5)
            if name == "platform":
                entry["cpu_s_per_message_by_unit"] = self.by_unit(self.targets[name], entry["rounds"], messages)
            if name not in TO_SINK:
                entry["found"] = sum(r["found"] for r in entry["rounds"])
                entry["sent"] = messages

    @staticmethod
    def by_unit(target, rounds, messages):
        """{tier: {unit: CPU s per message}}, summed over the tier's hosts and the rounds, largest
        first; not less the idle rate (the lab's timers and probes count here)."""
        result = {}
        for tier, members in target.tiers.items():
            units = {}
            for r in rounds:
                for container in members:
                    for unit, value in r["unit_cpu_s"].get(container, {}).items():
                        units[unit] = units.get(unit, 0.0) + value
            result[tier] = {unit: round(value / messages, 5) for unit, value
                            in sorted(units.items(), key=lambda item: -item[1]) if value / messages >= 0.00005}
        return result

    # --- latency -------------------------------------------------------------------------
    def latency_phase(self, name, label, serial=0, rate=0.0):
        target = self.targets[name]
        tag = f"bench {self.runid} {label}"
        mode = f"--serial {serial}" if serial else f"--rate {rate:.2f} --seconds {self.args.load_seconds}"
        out = containers.sh(self.source, f"python3 /usr/local/bin/bench-sender smtp --target {target.smtp} "
                                         f"--rcpts {','.join(self.users)} --tag '{tag}' --domain {self.marker} "
                                         f"--size {self.args.size} {mode}")
        records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        accepted = {r["token"]: r for r in records if r["accepted"]}

        def delivered():
            files = [f for f in maildir.scan(target.maildirs.values(), self.marker) if tag in f["subject"]]
            tokens = {f["message_id"].split("@")[0] for f in files}
            return files if set(accepted) <= tokens else None

        complete, _ = settle(lambda: maildir.count(target.maildirs.values()), lambda count: delivered() is not None,
                             self.args.stall_seconds, interval=1)
        files = [f for f in maildir.scan(target.maildirs.values(), self.marker) if tag in f["subject"]]
        seen = {}
        for f in files:
            seen.setdefault(f["message_id"].split("@")[0], []).append(f["ctime"])
        latencies = [min(seen[t]) - r["accepted"] for t, r in accepted.items() if t in seen]
        # From the client's connect: a milter scans before the 250, the platform after it.
        end_to_end = [min(seen[t]) - r["start"] for t, r in accepted.items() if t in seen]
        starts = sorted(r["start"] for r in records)
        offered = (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 else 0.0
        result = {
            "offered_msgs_per_s": round(rate if rate else offered, 2), "sent": len(records),
            "accepted": len(accepted), "refused": len(records) - len(accepted),
            "errors": sorted({r["error"] for r in records if r["error"]})[:5],
            "lost": sum(1 for t in accepted if t not in seen), "duplicates": sum(1 for v in seen.values() if len(v) > 1),
            "p50_s": percentile(latencies, 0.5), "p95_s": percentile(latencies, 0.95),
            "p99_s": percentile(latencies, 0.99), "max_s": max(latencies) if latencies else None,
        }
        result["end_to_end"] = {"p50_s": percentile(end_to_end, 0.5), "p95_s": percentile(end_to_end, 0.95),
                                "p99_s": percentile(end_to_end, 0.99)}
        for values in (result, result["end_to_end"]):
            for key in ("p50_s", "p95_s", "p99_s", "max_s"):
                if key in values:
                    values[key] = round(values[key], 3) if values[key] is not None else None
        target.clean(self.marker)
        return result

    def latency(self):
        for name in [c for c in CONFIGS if c in self.targets and c not in TO_SINK]:
            phases = {"light": self.latency_phase(name, "light", serial=self.args.light_messages)}
            log(f"latency: {name} one at a time p50 {phases['light']['p50_s']} s p99 {phases['light']['p99_s']} s")
            capacity = self.results["throughput"][name]["median_msgs_per_s"]
            for share in self.args.load_shares:
                key = f"load_{int(share * 100)}"
                phases[key] = self.latency_phase(name, key, rate=capacity * share)
                phases[key]["share_of_capacity"] = share
                log(f"latency: {name} at {int(share * 100)}% ({phases[key]['offered_msgs_per_s']} msg/s) "
                    f"p50 {phases[key]['p50_s']} s p95 {phases[key]['p95_s']} s p99 {phases[key]['p99_s']} s, "
                    f"{phases[key]['lost']} lost, {phases[key]['refused']} refused")
            self.results["latency"][name] = phases

    # --- summary -------------------------------------------------------------------------
    def summarise(self):
        results = self.results
        for name, phases in results["latency"].items():
            throughput = results["throughput"].get(name, {})
            results["loss"][name] = {
                "accepted": sum(p["accepted"] for p in phases.values()) + throughput.get("sent", 0),
                "lost": sum(p["lost"] for p in phases.values()) + max(0, throughput.get("sent", 0)
                                                                        - throughput.get("found", 0)),
                "duplicates": sum(p["duplicates"] for p in phases.values())
                + sum(r["duplicates"] for r in throughput.get("rounds", [])),
            }
        platform = results["throughput"].get("platform", {}).get("cpu_s_per_message", {})
        sessions = results["sessions"]
        total_sessions = sum(s["sessions"] for s in sessions.values())

        def per_session(tier):
            if not total_sessions:
                return None
            return round(sum(s["cpu_s"][tier] for s in sessions.values()) / total_sessions, 5)

        results["tier_costs"] = {
            "loadbalancer_per_message": platform.get("loadbalancer"),
            "spamcheck_per_message": platform.get("spamcheck"),
            "gateway_per_message": platform.get("gateway"),
            "mailbox_per_message": platform.get("mailbox"),
            "relay_per_session": per_session("gateway"),
            "mailbox_per_session": per_session("mailbox"),
        }
        results["session_costs_detail"] = {tier: per_session(tier) for tier in
                                           ("loadbalancer", "gateway", "mailbox", "directory")} if total_sessions else {}
        throughput = results["throughput"]
        checks = {}
        if "platform" in throughput and "bare" in throughput:
            checks["platform_vs_bare_at_least_0.15"] = throughput["platform"]["ratio_to_bare"] >= 0.15
        if "platform" in throughput and "amavis" in throughput:
            ratio = throughput["platform"]["median_msgs_per_s"] / throughput["amavis"]["median_msgs_per_s"]
            results["platform_vs_amavis"] = round(ratio, 2)
            checks["platform_vs_amavis_at_least_5x"] = ratio >= 5
        if "platform" in throughput and "hops" in throughput:
            # How much of the gap to bare is the hop count alone, and how much the platform's work.
            results["platform_vs_hops"] = round(throughput["platform"]["median_msgs_per_s"]
                                                / throughput["hops"]["median_msgs_per_s"], 3)
        latency = results["latency"].get("platform", {})
        if latency:
            checks["light_p50_at_most_0.3s"] = (latency["light"]["p50_s"] or 99) <= 0.3
            if "load_80" in latency:
                checks["p99_at_80pct_at_most_2s"] = (latency["load_80"]["p99_s"] or 99) <= 2
        if "platform" in results["loss"]:
            checks["nothing_lost"] = results["loss"]["platform"]["lost"] == 0 and \
                results["loss"]["platform"]["duplicates"] == 0
        results["targets_design_6"] = checks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--rounds", type=int, default=2, help="interleaved throughput rounds after the warm-up")
    parser.add_argument("--round-seconds", type=float, default=15, help="each round's length at the warm-up's rate")
    parser.add_argument("--sessions", type=int, default=20, help="parallel smtp-source sessions")
    parser.add_argument("--size", type=int, default=4096, help="message body bytes")
    parser.add_argument("--light-messages", type=int, default=20, help="latency, one message at a time")
    parser.add_argument("--load-shares", default="0.8", help="latency at these shares of the measured capacity")
    parser.add_argument("--load-seconds", type=float, default=20, help="length of each fixed-rate phase")
    parser.add_argument("--stall-seconds", type=float, default=60,
                        help="stop waiting for accepted mail once nothing new arrived for this long (counted as lost)")
    parser.add_argument("--session-seconds", type=float, default=15, help="POP3 and IMAP phases, each")
    parser.add_argument("--session-concurrency", type=int, default=6, help="parallel POP3/IMAP clients")
    parser.add_argument("--amavis-servers", type=int, default=4, help="amavisd-new children (and smtp-amavis maxproc)")
    parser.add_argument("--recipients", default="", help="lab users to send to (default: every non-forwarding user)")
    parser.add_argument("--idle-seconds", type=float, default=10, help="idle CPU measured this long, then subtracted")
    parser.add_argument("--quick", action="store_true", help="smaller warm-up (for a smoke test)")
    parser.add_argument("--rebuild-image", action="store_true", help="rebuild " + containers.BENCH_IMAGE)
    parser.add_argument("--output", default="artifacts/bench", help="report.json and the plots go here")
    args = parser.parse_args()
    args.configs = [c for c in args.configs.split(",") if c]
    args.load_shares = [float(s) for s in args.load_shares.split(",") if s]
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configurations: {', '.join(sorted(unknown))}")

    started = time.time()
    log("setup: reading the lab inventory")
    bench = Bench(args)
    contracts = ", ".join(f"{u} ({'spam' if c['spam_check'] else '-'}/{'virus' if c['virus_check'] else '-'})"
                          for u, c in bench.users.items())
    log(f"setup: run {bench.runid}, recipients {contracts}")
    try:
        bench.setup()
        log(f"setup: done ({', '.join(bench.targets)}); measuring idle CPU for {args.idle_seconds:.0f} s")
        bench.idle()
        if "platform" in bench.targets:
            bench.sessions()
        bench.throughput()
        bench.latency()
    finally:
        log("teardown: removing the bench containers and the bench's mail")
        bench.teardown()
    bench.summarise()
    results = bench.results
    results["run"] = {
        "runid": bench.runid, "lab": bench.lab_name, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started), "host_cpus": __import__("os").cpu_count(),
        "recipients": {u: {k: c[k] for k in ("spam_check", "virus_check")} for u, c in bench.users.items()},
        "options": {k: v for k, v in vars(args).items() if k not in ("output",)},
        "concurrent_ansible_playbooks": sorted(NOISE),
    }
    if NOISE:
        log(f"warning: ansible-playbook ran on the host during the bench ({len(NOISE)} kinds): CPU figures are noisy")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    report.plots(results, output, log)
    print(report.table(results))
    log(f"report: {output / 'report.json'}")


if __name__ == "__main__":
    main()
