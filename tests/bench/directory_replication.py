#!/usr/bin/env python3
"""Directory replication figures in the lab (`make lab`), printed as they are measured.

    python3 tests/bench/directory_replication.py [--changes 50] [--users 5000]

1. Delay from a write on the first provider (as the modules write: root over ldapi) to
   the moment the last replica serves it: one watcher per slapd host polls the changed
   attribute every 20 ms on that host; median and max over --changes writes.
2. Refill of a wiped replica (gw1) holding --users extra entries: seconds from the slapd
   start until its gate opens (the replica has caught up), and how many entries it holds.
The extra entries live under ou=bench.example and are removed at the end.
"""

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lab_inventory  # noqa: E402

BASE = "dc=ispmail,dc=test"
BENCH_OU = f"ou=bench.example,ou=domains,{BASE}"
PROBE = f"mail=probe@bench.example,{BENCH_OU}"
LDAPI = "-Q -Y EXTERNAL -H ldapi:///"


def podman(container, command, stdin=None, check=True):
    env = dict(os.environ, CONTAINERS_CONF=str(lab_inventory.ROOT / "lab" / "containers.conf"))
    proc = subprocess.run(["podman", "exec", "-i", container, "sh", "-c", command], input=stdin, text=True,
                          capture_output=True, env=env)
    if check and proc.returncode:
        raise RuntimeError(f"{container}: {command}: {proc.stderr}")
    return proc.stdout


def entry(dn, *lines):
    return f"dn: {dn}\n" + "".join(line + "\n" for line in lines) + "\n"


def user(address):
    return entry(f"mail={address},{BENCH_OU}", "objectClass: inetOrgPerson", "objectClass: ispmailUser",
                 f"cn: {address}", f"sn: {address}", f"mail: {address}", "ispmailEnabled: TRUE",
                 "ispmailMailboxHost: mbox1")


def wait_ready(container, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if podman(container, "/usr/local/sbin/ispmail-ldap-sync status --max-lag 0 >/dev/null; echo $?").strip() == "0":
            return True
        time.sleep(0.5)
    return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--users", type=int, default=5000)
    args = parser.parse_args()
    lab = lab_inventory.load()
    name = {host: lab["hosts"][host]["ansible_host"] for host in lab["hosts"]}
    writer = lab["groups"]["ldap"][0]
    hosts = sorted(set(lab["groups"]["ldap"]).union(*(lab["groups"][g] for g in
                                                       ("gateway", "spamcheck", "mailbox", "webmail"))))
    replicas = [host for host in hosts if host != writer]

    podman(name[writer], f"ldapadd {LDAPI}", entry(BENCH_OU, "objectClass: organizationalUnit",
                                                    "objectClass: ispmailDomain", "ou: bench.example",
                                                    "ispmailDomainName: bench.example") + user("probe@bench.example"))
    try:
        for host in replicas:
            if not wait_ready(name[host]):
                raise RuntimeError(f"{host} did not catch up")
        print(f"1. {args.changes} writes on {writer}, watched on {len(replicas)} replicas and providers", flush=True)
        watch = (f"while :; do v=$(ldapsearch -LLL {LDAPI} -b '{PROBE}' -s base ispmailQuota 2>/dev/null "
                 f"| sed -n 's/^ispmailQuota: //p'); [ \"$v\" != \"$o\" ] && echo \"$v $(date +%s.%N)\"; o=$v; "
                 f"sleep 0.02; done")
        for host in replicas:
            podman(name[host], f"nohup sh -c {shlex.quote(watch)} > /tmp/bench-watch.log 2>&1 & echo $! > /tmp/bench-watch.pid")
        written = {}
        for n in range(1, args.changes + 1):
            out = podman(name[writer], f"date +%s.%N; ldapmodify {LDAPI} >/dev/null",
                         entry(PROBE, "changetype: modify", "replace: ispmailQuota", f"ispmailQuota: {n}"))
            written[str(n)] = float(out.split()[0])
            time.sleep(0.5)
            if n % 10 == 0:
                print(f"   {n} writes", flush=True)
        time.sleep(3)
        seen = {}
        for host in replicas:
            podman(name[host], "kill $(cat /tmp/bench-watch.pid)", check=False)
            for line in podman(name[host], "cat /tmp/bench-watch.log").splitlines():
                value, when = line.split() if len(line.split()) == 2 else (None, None)
                if value in written:
                    seen.setdefault(value, {})[host] = float(when) - written[value]
        last = [max(seen[v].values()) for v in written if v in seen and len(seen[v]) == len(replicas)]
        missing = args.changes - len(last)
        print(f"   delay to the last replica: median {statistics.median(last) * 1000:.0f} ms, "
              f"max {max(last) * 1000:.0f} ms over {len(last)} writes"
              + (f"; {missing} writes not seen on every host (polling missed a value)" if missing else ""))

        print(f"2. {args.users} extra entries, then gw1's replica wiped and refilled", flush=True)
        ldif = "".join(user(f"bench{n:05d}@bench.example") for n in range(args.users))
        started = time.time()
        podman(name[writer], f"ldapadd {LDAPI} >/dev/null", ldif)
        print(f"   added on {writer} in {time.time() - started:.1f} s", flush=True)
        for host in replicas:
            if not wait_ready(name[host]):
                raise RuntimeError(f"{host} did not catch up")
        print(f"   every replica caught up {time.time() - started:.1f} s after the first add", flush=True)
        gateway = name[lab["groups"]["gateway"][0]]
        podman(gateway, "systemctl stop slapd && rm -f /var/lib/ldap/data.mdb /var/lib/ldap/lock.mdb")
        started = time.time()
        podman(gateway, "systemctl start slapd")
        while podman(gateway, "nft list table inet ispmail_ldap_gate >/dev/null 2>&1; echo $?").strip() == "0":
            time.sleep(0.2)
        refill = time.time() - started
        count = podman(gateway, f"ldapsearch -LLL {LDAPI} -b {BASE} dn | grep -c '^dn:'").strip()
        print(f"   gw1 refilled {count} entries; its gate opened {refill:.1f} s after slapd started")
    finally:
        podman(name[writer], f"ldapdelete {LDAPI} -r '{BENCH_OU}'", check=False)


if __name__ == "__main__":
    main()
