#!/usr/bin/env python3
"""Mail chain throughput against a bare Postfix relay, measured in the same run.

    .venv/bin/python tests/bench/gateway_throughput.py [--entry gateway|platform]
        [--messages 1000] [--sessions 20] [--rounds 2]

A throwaway container on the lab network (label ispmail.lab=<lab>, removed at the end)
runs smtp-source. "bare" is one stock Postfix in that container relaying to smtp-sink;
"chain" is smtp-source into gw1's std instance (--entry gateway) or into lb1:25
(--entry platform: HAProxy, spam1's postscreen and edge, the per-recipient rspamd scan
in scan, then the gateways) and on through route, vscan (ClamAV), mbox and LMTP until
every message is a file in the recipient's Maildir. The recipient has both contracts,
so every message is spam-checked and virus-scanned. Rounds are interleaved; the figures
are messages per second and the chain's ratio to bare. With --entry platform the scan
times ispmail-spam-milter logged (its HTTP round trip, and rspamd's own time_real) are
summarised as median and p95.
"""

import argparse
import json
import smtplib
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lab_inventory  # noqa: E402

RECIPIENT = "alice@example.com"
BARE_CONFIG = [
    "relayhost=[127.0.0.1]:2526", "mynetworks=127.0.0.0/8", "inet_interfaces=loopback-only",
    "inet_protocols=ipv4", "mydestination=", "smtp_tls_security_level=none", "default_process_limit=100",
    "maillog_file=/var/log/postfix.log", "compatibility_level=3.6",
]


def podman(*args, check=True):
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True).stdout.strip()


def sh(container, command, check=True):
    return podman("exec", container, "sh", "-c", command, check=check)


def start_source_container(lab):
    name = f"{lab['lab_name']}-bench-{uuid.uuid4().hex[:6]}"
    image = "localhost/ispmail-lab-base:bookworm"
    podman("run", "--detach", "--name", name, "--network", f"{lab['lab_name']}-net", "--no-hosts",
           "--label", f"ispmail.lab={lab['lab_name']}", "--ulimit=nofile=4096:4096", "--ulimit=nproc=4096:4096",
           "--entrypoint", "sleep", image, "infinity")
    sh(name, "echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections && "
             "DEBIAN_FRONTEND=noninteractive apt-get -qq update && "
             "DEBIAN_FRONTEND=noninteractive apt-get -qq install -y postfix >/dev/null")
    sh(name, "touch /etc/postfix/main.cf && postconf -e " + " ".join(f"'{c}'" for c in BARE_CONFIG)
       + " && newaliases; postfix start && (smtp-sink -u nobody 127.0.0.1:2526 256 >/dev/null 2>&1 &)")
    return name


def wait(predicate, timeout, interval=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return time.time()
        time.sleep(interval)
    raise TimeoutError("benchmark did not finish in time")


def smtp_source(container, target, messages, sessions, size, subject, recipient):
    sh(container, f"smtp-source -s {sessions} -l {size} -m {messages} -S '{subject}' "
                  f"-f bench@example.net -t {recipient} {target}")


def bare_round(container, messages, sessions, size):
    start = time.time()
    smtp_source(container, "127.0.0.1:25", messages, sessions, size, "bare", "sink@example.net")
    end = wait(lambda: "Mail queue is empty" in sh(container, "postqueue -p"), 600)
    return messages / (end - start)


def maildir_count(mailbox_container, user):
    """Messages in the user's INBOX and Junk (the spam check files smtp-source's bare messages there)."""
    local, domain = user.split("@")
    maildir = f"/var/vmail/{domain}/{local}/Maildir"
    folders = " ".join(f"{maildir}/{folder}{sub}" for folder in ("", ".Junk/") for sub in ("new", "cur"))
    return int(sh(mailbox_container, f"ls {folders} 2>/dev/null | grep -c ,", check=False) or 0)


def expunge(lab, subject):
    """Remove the benchmark's mail again, on the one server that serves the user."""
    for folder in ("INBOX", "Junk"):
        sh(pinned_server(lab), f"doveadm expunge -u {RECIPIENT} mailbox {folder} header Subject '{subject}'",
           check=False)


def entry_address(lab, entry):
    return lab["hosts"]["gw1" if entry == "gateway" else "lb1"]["node_address"]


def chain_round(lab, entry, container, mailbox_container, messages, sessions, size, subject):
    before = maildir_count(mailbox_container, RECIPIENT)
    start = time.time()
    smtp_source(container, f"{entry_address(lab, entry)}:25", messages, sessions, size, subject, RECIPIENT)
    end = wait(lambda: maildir_count(mailbox_container, RECIPIENT) >= before + messages, 1800, interval=1)
    delivered = maildir_count(mailbox_container, RECIPIENT) - before
    return messages / (end - start), delivered


def light_load_latency(lab, entry, count):
    """Seconds from SMTP acceptance at the entry to Dovecot logging the message stored, one at a time.

    Both timestamps come from the same kernel clock (containers share it).
    """
    gateway = entry_address(lab, entry)
    server = pinned_server(lab)
    accepted = {}
    since = time.time()
    for _ in range(count):
        msgid = f"<{uuid.uuid4().hex}@bench.example.net>"
        text = f"From: bench@example.net\r\nTo: {RECIPIENT}\r\nSubject: latency\r\nMessage-ID: {msgid}\r\n\r\nx\r\n"
        with smtplib.SMTP(gateway, 25, timeout=30) as smtp:
            smtp.sendmail("bench@example.net", [RECIPIENT], text.encode())
        accepted[msgid] = time.time()
        time.sleep(0.3)
    latencies = {}

    def saved():
        out = sh(server, f"journalctl -o json --no-pager --since=@{int(since)} -t dovecot")
        for line in out.splitlines():
            entry = json.loads(line)
            message = entry.get("MESSAGE", "")
            if ("stored mail into" in message or "saved mail to" in message) and "msgid=<" in message:
                msgid = "<" + message.split("msgid=<", 1)[1].split(">", 1)[0] + ">"
                if msgid in accepted:
                    latencies[msgid] = int(entry["__REALTIME_TIMESTAMP"]) / 1e6 - accepted[msgid]
        return len(latencies) == count

    wait(saved, 120, interval=1)
    expunge(lab, "latency")
    values = sorted(latencies.values())
    return {"median_s": round(statistics.median(values), 3), "max_s": round(values[-1], 3)}


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def scan_times(lab, since):
    """Median and p95 (seconds) of the per-recipient scans spam1's milter logged since `since`."""
    spam = lab["hosts"][lab["groups"]["spamcheck"][0]]["ansible_host"]
    out = sh(spam, f"journalctl --no-pager -o cat --since=@{int(since)} -t ispmail-spam-milter")
    milter, rspamd = [], []
    for line in out.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if "scan_time" in fields:
            milter.append(float(fields["scan_time"].rstrip("s")))
            rspamd.append(float(fields.get("rspamd_time", "0s").rstrip("s")))
    if not milter:
        return {}
    def summary(values):
        return {"median": round(statistics.median(values), 3), "p95": round(percentile(values, 0.95), 3)}

    return {"scans": len(milter), "milter_round_trip_s": summary(milter), "rspamd_time_real_s": summary(rspamd)}


def pinned_server(lab):
    ldap = lab["hosts"][lab["groups"]["ldap"][0]]["ansible_host"]
    out = sh(ldap, f"ldapsearch -Q -LLL -Y EXTERNAL -H ldapi:/// -b ou=domains,dc=ispmail,dc=test '(mail={RECIPIENT})' ispmailMailboxHost")
    host = out.split("ispmailMailboxHost: ")[1].split()[0]
    return lab["hosts"][host]["ansible_host"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-messages", type=int, default=20)
    parser.add_argument("--entry", choices=["gateway", "platform"], default="gateway")
    args = parser.parse_args()
    lab = lab_inventory.load()
    mailbox_container = lab["hosts"][lab["groups"]["mailbox"][0]]["ansible_host"]
    subject = f"bench {uuid.uuid4().hex[:8]}"
    started = time.time()
    latency = light_load_latency(lab, args.entry, args.latency_messages)
    container = start_source_container(lab)
    bare, chain, lost = [], [], 0
    try:
        for _ in range(args.rounds):
            bare.append(bare_round(container, args.messages, args.sessions, args.size))
            rate, delivered = chain_round(lab, args.entry, container, mailbox_container, args.messages,
                                          args.sessions, args.size, subject)
            chain.append(rate)
            lost += args.messages - delivered
    finally:
        podman("rm", "-f", container, check=False)
        expunge(lab, subject)
    result = {
        "entry": args.entry, "messages_per_round": args.messages, "sessions": args.sessions, "size": args.size,
        "bare_msgs_per_s": [round(r, 1) for r in bare], "chain_msgs_per_s": [round(r, 1) for r in chain],
        "bare_median": round(statistics.median(bare), 1), "chain_median": round(statistics.median(chain), 1),
        "ratio": round(statistics.median(chain) / statistics.median(bare), 3), "lost": lost,
        "light_load_latency": latency,
    }
    if args.entry == "platform":
        result["spam_scan"] = scan_times(lab, started)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
