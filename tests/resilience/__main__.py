#!/usr/bin/env python3
"""Faults against the running lab under steady client load (`make resilience`).

    .venv/bin/python tests/resilience [--short] [--faults rspamd,gateway-kill] [--fault-seconds 60] [--rate 2]
    .venv/bin/python tests/resilience --list-faults

Clients reach the platform only through the load balancer: inbound SMTP (:25), authenticated
submission (:587, STARTTLS), POP3 and IMAP logins. Faults are injected one after another,
each for --fault-seconds, with --settle-seconds between them, and always repaired (also on
Ctrl-C). Then the queues drain (at most --drain-seconds) and every accepted message is looked
up in the Maildirs on the shared mail store: delivered exactly once, into INBOX, and how
late. artifacts/resilience/report.json and timeline.png; docs/resilience.md has the details.
Exit status 1 when a message is lost, duplicated or refused with 5xx, or a fault did not heal.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "bench" / "side_by_side"), str(HERE.parent)]
import containers  # noqa: E402  (tests/bench/side_by_side)
import delivery  # noqa: E402
import faults as faultlib  # noqa: E402
import lab_inventory  # noqa: E402
import summary  # noqa: E402
from labmap import Lab, contract, expected_mailboxes  # noqa: E402
from load import LoadGenerator  # noqa: E402

NOISE = set()


def ansible_playbooks():
    """The ansible-playbook runs on this host now (another engineer's deployment, molecule)."""
    ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True, check=False).stdout.splitlines()
    return {" ".join(line.split()[1:4]) for line in ps if "ansible-playbook" in line and "python" in line}


def log(message):
    """One progress line; also notes any ansible-playbook running meanwhile (it changes the lab
    under the run and takes CPU from it)."""
    NOISE.update(ansible_playbooks())
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Interrupted(Exception):
    pass


def _terminate(signum, frame):
    raise Interrupted(f"signal {signum}")


class Run:
    def __init__(self, args, lab):
        self.args, self.lab = args, lab
        self.runid = uuid.uuid4().hex[:8]
        self.recipients = args.recipients
        self.expected = {rcpt: expected_mailboxes(lab.users, rcpt) for rcpt in self.recipients}
        self.boxes = sorted({box for boxes in self.expected.values() for box in boxes} | set(args.read_users))
        self.pins = lab.pinned_mailbox_hosts(self.boxes)
        self.mailbox = args.mailbox or max(lab.groups["mailbox"],
                                           key=lambda host: sum(1 for pin in self.pins.values() if pin == host))
        self.faults = faultlib.all_faults(lab, args.gateway, self.mailbox)
        self.records = []  # one per selected fault, in order
        self.injected = []  # faults injected and not yet repaired
        self.current = None
        self.index_lock = threading.Lock()
        self.done = threading.Event()

    # --- delivery so far -------------------------------------------------------------------
    def complete(self):
        """(accepted messages, those found in every mailbox they belong in)."""
        with self.index_lock:
            copies = self.index.refresh().by_token()
        with self.load.lock:
            accepted = [m for m in self.load.messages if m.accepted]
        found = sum(1 for m in accepted if {c["user"] for c in copies.get(m.token, [])} >= set(self.expected[m.rcpt]))
        return len(accepted), found

    def progress(self):
        while not self.done.wait(self.args.progress_seconds):
            counts = self.load.counts()
            accepted, found = self.complete()
            log(f"t+{time.time() - self.start:4.0f}s [{self.current or 'no fault'}] sent {counts['sent']} "
                f"accepted {accepted} delivered {found} waiting {counts['pending']} | refused tries "
                f"{counts['refused_attempts']} 5xx {counts['rejected']} | reads {counts['reads']} "
                f"({counts['read_errors']} failed)")

    # --- faults ----------------------------------------------------------------------------
    def prepare(self, names):
        for name in names:
            fault = self.faults[name]
            record = {"name": name, "description": fault.description, "host": fault.host, "start": None,
                      "end": None, "recovered_after": None, "problems": [], "skipped": None}
            try:
                record["skipped"] = fault.prepare()
            except (RuntimeError, ValueError, IndexError) as error:
                record["skipped"] = f"could not look at {fault.host}: {type(error).__name__}: {error}"
            if record["skipped"]:
                log(f"fault {name}: skipped, {record['skipped']}")
            self.records.append((fault, record))

    def wait_for_ansible(self, fault):
        """A fault in the middle of someone's deployment would break it (a host gone under a
        play): wait until no ansible-playbook runs, at most --ansible-wait-seconds."""
        deadline = time.time() + self.args.ansible_wait_seconds
        running = ansible_playbooks()
        if running and self.args.ansible_wait_seconds:
            log(f"fault {fault.name}: waiting, ansible-playbook is running ({'; '.join(sorted(running))})")
            while running and time.time() < deadline:
                time.sleep(5)
                running = ansible_playbooks()
        return running

    def inject(self, fault, record):
        running = self.wait_for_ansible(fault)
        if running and self.args.ansible_wait_seconds:
            record["skipped"] = (f"an ansible-playbook ran for all of the {self.args.ansible_wait_seconds:.0f} s "
                                 f"wait ({'; '.join(sorted(running))})")
            log(f"fault {fault.name}: skipped, {record['skipped']}")
            return
        log(f"fault {fault.name}: start ({fault.description}) for {self.args.fault_seconds:.0f} s")
        self.current = fault.name
        record["start"] = time.time()
        self.injected.append(fault)
        try:
            fault.inject()
            until = time.monotonic() + self.args.fault_seconds
            while time.monotonic() < until:
                fault.watch()
                time.sleep(max(0.0, min(1.0, until - time.monotonic())))
        except RuntimeError as error:
            record["problems"].append(f"inject failed: {error}")
            log(f"fault {fault.name}: inject failed: {error}")
        except (KeyboardInterrupt, Interrupted):
            log(f"fault {fault.name}: interrupted, repairing")
            raise
        finally:
            self.repair(fault, record)
        self.current = f"{fault.name} recovering"
        deadline = time.time() + self.args.recovery_seconds
        problems, waited_for = ["not checked"], set()
        while time.time() < deadline:
            try:
                problems = fault.recovered()
            except RuntimeError as error:
                problems = [str(error)]
            if not problems:
                break
            waited_for.update(problems)
            time.sleep(2)
        record["waited_for"] = sorted(waited_for)  # what took its time to come back
        record["recovered_after"] = round(time.time() - record["end"], 1) if not problems else None
        record["problems"] += problems
        record["notes"] = fault.notes
        self.current = None
        log(f"fault {fault.name}: end, repaired after {record['end'] - record['start']:.0f} s; " +
            (f"all back {record['recovered_after']:.0f} s later" if not problems
             else f"NOT back after {self.args.recovery_seconds:.0f} s: {'; '.join(problems)}"))

    def repair(self, fault, record):
        """Repair, trying again on an error: the lab must never be left broken."""
        for attempt in range(1, 4):
            try:
                fault.repair()
                break
            except RuntimeError as error:
                log(f"fault {fault.name}: repair failed ({error}), attempt {attempt} of 3")
                record["problems"].append(f"repair attempt {attempt} failed: {error}")
                time.sleep(5)
        record["end"] = time.time()
        if fault in self.injected:
            self.injected.remove(fault)

    # --- the run ---------------------------------------------------------------------------
    def run(self, names):
        args = self.args
        store = self.lab.mail_store()
        self.prepare(names)
        self.load = LoadGenerator(self.lab, self.runid, self.recipients, args.logins, args.sender, args.rate,
                                  args.submission_share, args.read_rate, args.read_users, args.workers, args.timeout)
        self.start = time.time()
        self.index = delivery.MaildirIndex({box: self.lab.maildir(store, box) for box in self.boxes}, self.runid,
                                           since=self.start - 5)
        reporter = threading.Thread(target=self.progress, daemon=True)
        self.interrupted = None
        try:
            self.load.start()
            reporter.start()
            log(f"load: {args.rate} msg/s ({args.submission_share:.0%} submissions), {args.read_rate} reads/s, "
                f"warming up for {args.warmup_seconds:.0f} s")
            time.sleep(args.warmup_seconds)
            accepted, found = self.complete()
            if not found:
                raise Interrupted(f"nothing delivered after the warm-up ({accepted} accepted): is the lab up? "
                                  f"{self.load.counts()}")
            for fault, record in self.records:
                if record["skipped"]:
                    continue
                self.inject(fault, record)
                if record["start"] is not None:
                    time.sleep(args.settle_seconds)
            self.drain(args.drain_seconds)
        except (KeyboardInterrupt, Interrupted) as error:
            self.interrupted = str(error) or "Ctrl-C"
            log(f"stopping: {self.interrupted}")
            self.repair_all()
            try:  # what was accepted must still be counted, not called lost
                self.drain(min(60.0, args.drain_seconds), "interrupted: ")
            except (KeyboardInterrupt, Interrupted):
                log("drain cut short: messages still on their way count as lost or queued")
        finally:
            self.repair_all()
            self.load.stop()
            self.done.set()
        self.end = time.time()

    def repair_all(self):
        for fault in list(self.injected):
            record = next(r for f, r in self.records if f is fault)
            log(f"fault {fault.name}: repairing after the interruption")
            self.repair(fault, record)

    def drain(self, seconds, why=""):
        args = self.args
        deadline = time.time() + seconds
        self.load.stop_sending(retry_until=deadline)
        self.current = "drain"
        log(f"{why}drain: no new messages; retries and the queues get at most {seconds:.0f} s")
        if args.flush_queues:
            self.flush()
        while time.time() < deadline:
            accepted, found = self.complete()
            if not self.load.pending() and found >= accepted:
                log(f"drain: all {accepted} accepted messages delivered; {args.late_seconds:.0f} s more for late "
                    "duplicates")
                time.sleep(args.late_seconds)
                break
            time.sleep(2)
        else:
            log("drain: time is up, counting what arrived")

    def flush(self):
        """postqueue -f on every Postfix instance of the mail path (as an operator would after an
        incident): deferred mail goes now, not at its next retry."""
        log("drain: flushing the queues (postqueue -f on every instance)")
        for group in ("spamcheck", "gateway", "mailbox"):
            for host in self.lab.groups[group]:
                containers.sh(self.lab.container(host), "postmulti -l | awk '{print $4}' | "
                                                        "while read -r c; do postqueue -c \"$c\" -f; done", check=False)

    # --- results ---------------------------------------------------------------------------
    def results(self):
        with self.index_lock:
            copies = self.index.refresh().by_token()
        messages = [m.record() for m in self.load.messages]
        missing = [m for m in messages if m["accepted"] and
                   not {c["user"] for c in copies.get(m["token"], [])} >= set(self.expected[m["rcpt"]])]
        queued = {}
        if missing:
            log(f"verify: {len(missing)} accepted messages not (fully) delivered, looking for them in the queues")
            queued = delivery.queued_tokens([self.lab.container(h) for g in ("spamcheck", "gateway", "mailbox")
                                             for h in self.lab.groups[g]], self.runid)
        for message in messages:
            message["verdict"] = delivery.verdict(message, self.expected[message["rcpt"]],
                                                  copies.get(message["token"], []), queued.get(message["token"], []))
        faults = [record for _, record in self.records]
        args = self.args
        results = {
            "run": {"runid": self.runid, "lab": self.lab.name, "start": self.start, "end": self.end,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.start)),
                    "seconds": round(self.end - self.start), "interrupted": self.interrupted,
                    "host_cpus": os.cpu_count(), "load_balancer": self.lab.lb_address, "ports": self.lab.ports,
                    "gateway": args.gateway, "mailbox": self.mailbox, "sender": args.sender,
                    "recipients": {r: {"contract": contract(self.lab.users[r]), "mailboxes": self.expected[r]}
                                   for r in self.recipients},
                    "mailbox_hosts": self.pins, "reads_skipped_while_busy": self.load.reads_skipped,
                    "options": {k: v for k, v in vars(args).items() if k != "output"},
                    "concurrent_ansible_playbooks": sorted(NOISE)},
            "faults": faults,
            "messages": messages,
            "reads": self.load.reads,
        }
        results["windows"] = summary.windows(messages, self.load.reads, faults, self.start, self.end)
        return results

    def clean(self):
        """The run's messages out of the mailboxes again (doveadm on the server each user is on)."""
        for user in self.boxes:
            host = self.pins.get(user)
            if host:
                command = f"doveadm expunge -u {user} mailbox '*' header X-Resilience-Run {self.runid}"
                containers.sh(self.lab.container(host), command, check=False)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default="", help="comma-separated subset (--list-faults)")
    parser.add_argument("--list-faults", action="store_true", help="print the faults and exit")
    parser.add_argument("--short", action="store_true",
                        help=f"one short pass for make test: {','.join(faultlib.SHORT)}, 20 s each, queues flushed")
    parser.add_argument("--fault-seconds", type=float, default=None, help="each fault lasts this long (60; short 20)")
    parser.add_argument("--settle-seconds", type=float, default=None, help="gap after each fault (30; short 5)")
    parser.add_argument("--warmup-seconds", type=float, default=None, help="load before the first fault (30; short 10)")
    parser.add_argument("--drain-seconds", type=float, default=None,
                        help="after the load: retries and queues get at most this long (600: a message deferred "
                             "several times waits 60, 120, 240 s ... between Postfix's tries; short 240)")
    parser.add_argument("--late-seconds", type=float, default=15, help="wait for late duplicates once all arrived")
    parser.add_argument("--recovery-seconds", type=float, default=240,
                        help="a repaired fault must be fully back within this long")
    parser.add_argument("--flush-queues", action=argparse.BooleanOptionalAction, default=None,
                        help="postqueue -f everywhere when the load stops (default: only with --short)")
    parser.add_argument("--ansible-wait-seconds", type=float, default=600,
                        help="before each fault, wait this long at most while an ansible-playbook runs (0: never)")
    parser.add_argument("--rate", type=float, default=2.0, help="new messages per second (inbound + submission)")
    parser.add_argument("--submission-share", type=float, default=0.3, help="share of messages sent as submissions")
    parser.add_argument("--read-rate", type=float, default=0.5, help="POP3/IMAP logins per second")
    parser.add_argument("--recipients", default="", help="lab users mail goes to (default: every lab user)")
    parser.add_argument("--logins", default="", help="users that submit (default: every lab user)")
    parser.add_argument("--read-users", default="", help="users whose mailboxes are read (default: every lab user)")
    parser.add_argument("--sender", default="loadgen@resilience.legacy.example",
                        help="envelope sender and HELO of inbound mail: a domain with an MX in the lab's DNS and "
                             "no SPF or DMARC record, so ham scores under the spam threshold from the runner")
    parser.add_argument("--gateway", default="", help="the gateway of the gateway faults (default: the first)")
    parser.add_argument("--mailbox", default="", help="the mailbox server of the mailbox faults "
                                                      "(default: the one most recipients are on)")
    parser.add_argument("--workers", type=int, default=16, help="parallel SMTP clients at most")
    parser.add_argument("--timeout", type=float, default=30, help="client timeout per SMTP/POP3/IMAP step")
    parser.add_argument("--progress-seconds", type=float, default=15, help="a progress line this often")
    parser.add_argument("--keep-mail", action="store_true", help="leave the run's messages in the mailboxes")
    parser.add_argument("--output", default="artifacts/resilience", help="report.json and timeline.png go here")
    args = parser.parse_args(argv)
    defaults = {"fault_seconds": (60, 20), "settle_seconds": (30, 5), "warmup_seconds": (30, 10),
                "drain_seconds": (600, 240), "flush_queues": (False, True)}
    for key, (full, short) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, short if args.short else full)
    return parser, args


def main(argv=None):
    parser, args = parse(argv)
    log("setup: reading the lab inventory")
    lab = Lab(lab_inventory.load())
    users = sorted(lab.users)
    for key in ("recipients", "logins", "read_users"):
        value = [u for u in getattr(args, key).split(",") if u] or users
        unknown = set(value) - set(users)
        if unknown:
            parser.error(f"--{key.replace('_', '-')}: not lab users: {', '.join(sorted(unknown))}")
        setattr(args, key, value)
    args.gateway = args.gateway or lab.groups["gateway"][0]
    if args.list_faults:
        for name, fault in faultlib.all_faults(lab, args.gateway, args.mailbox or lab.groups["mailbox"][0]).items():
            print(f"{name:22} {fault.description}{'  (in --short)' if name in faultlib.SHORT else ''}")
        return 0
    run = Run(args, lab)
    names = [n for n in args.faults.split(",") if n] or (faultlib.SHORT if args.short else list(run.faults))
    unknown = set(names) - set(run.faults)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))} (--list-faults)")
    log(f"setup: run {run.runid}; recipients " + ", ".join(
        f"{r} ({contract(lab.users[r])}, on {'+'.join(run.pins.get(b) or '?' for b in run.expected[r])})"
        for r in run.recipients))
    log(f"setup: faults {', '.join(names)}; {args.fault_seconds:.0f} s each, {args.settle_seconds:.0f} s apart; "
        f"gateway {args.gateway}, mailbox server {run.mailbox}")
    signal.signal(signal.SIGTERM, _terminate)
    # Also when started in the background, where the shell makes SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run.run(names)
    results = run.results()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(results, indent=1) + "\n")
    summary.timeline(results, output / "timeline.png", log)
    if not args.keep_mail:
        run.clean()
    print(summary.table(results["windows"], results["faults"]))
    whole = results["windows"][-1]
    failures = [f"{whole[k]} {label}" for k, label in (("lost", "lost"), ("duplicated", "duplicated"),
                                                       ("rejected_5xx", "refused with 5xx")) if whole[k]]
    failures += [f"{f['name']} did not heal" for f in results["faults"] if f["problems"]]
    if run.interrupted:
        failures.append(f"interrupted: {run.interrupted}")
    if NOISE:
        log(f"note: ansible-playbook ran on the host during the run ({len(NOISE)} kinds): delays are noisier")
    log(f"report: {output / 'report.json'} ({results['run']['seconds']} s)" +
        (f"; FAILED: {', '.join(failures)}" if failures else "; no message lost or duplicated"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
