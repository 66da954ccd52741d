"""Daemons come back by themselves (issue 16): each one's main process is killed with
SIGKILL, as a crash would end it, and within 30 s systemd has restarted it and it serves
again. Then clamd dies while a scanned message is on its way: the message waits in a
Postfix queue (clamav-milter's OnFail Defer) and is delivered, scanned, once clamd is back.

make test's short pass kills one daemon for each way a unit comes back (a Debian unit
given Restart=, the forking daemons found by their PID files, the platform's own units)
and the load balancer; ISPMAIL_FULL=1 kills every daemon of the issue's list, each
Postfix instance included.
Restart= is on-failure or always (role service_restart and the ispmail-* units):
systemd restarts a unit whose main process was killed by a signal other than SIGHUP,
SIGINT, SIGTERM or SIGPIPE, so SIGKILL tests exactly the crash case.
"""

import json
import shlex
import time

import pytest

import lab_inventory
from mailclient import imap_messages, message, wait_for
from outside import smtp_from_inet1
from test_takeover import all_at_home

BACK_WITHIN = 30

# Runs inside a lab container: does the service answer (a TCP port, a unix socket, or a
# command that exits 0)? With `expect`, the first bytes it sends must start with it.
PROBE = r"""
import json, socket, subprocess, sys
a = json.loads(sys.argv[1])
out = {"ok": False}
try:
    if "command" in a:
        out["ok"] = subprocess.run(a["command"], shell=True, capture_output=True, timeout=10).returncode == 0
    else:
        if "path" in a:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(5)
            sock.connect(a["path"])
        else:
            sock = socket.create_connection((a["host"], a["port"]), timeout=5)
        with sock:
            if a.get("send"):
                sock.sendall(a["send"].encode())
            if a.get("expect"):
                out["got"] = sock.recv(200).decode(errors="replace")
                out["ok"] = out["got"].startswith(a["expect"])
            else:
                out["ok"] = True
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""

LOCAL = "127.0.0.1"
# (host, unit, probe). Ports are the role defaults the lab keeps (see each role's
# defaults/main.yml); "NODE" is the host's own lab address (memcached listens there).
# make test's short pass: each way a unit comes back once (a Debian unit given Restart=,
# a forking daemon found by its PID file: init script, generated unit, postfix@; the
# platform's own units) plus the front door.
DAEMONS = [
    ("gw1", "clamav-daemon", {"path": "/run/clamav/clamd.ctl", "send": "zPING\0", "expect": "PONG"}),
    ("gw1", "clamav-milter", {"host": LOCAL, "port": 7357}),
    ("gw1", "postfix@postfix-vscan", {"host": LOCAL, "port": 10027, "expect": "220 "}),
    ("spam1", "ispmail-spam-milter", {"host": LOCAL, "port": 7359}),
    ("mbox1", "dovecot", {"host": LOCAL, "port": 24, "expect": "220 "}),
    ("ldap1", "slapd", {"host": LOCAL, "port": 389}),
    ("lb1", "haproxy", {"host": LOCAL, "port": 25}),
    # keepalived runs only where loadbalancer_vrrp_enabled (production, not the lab).
]
if lab_inventory.FULL:
    DAEMONS += [
        ("gw1", "ispmail-operator-filter", {"host": LOCAL, "port": 7358}),
        ("gw1", "ispmail-send-limit", {"host": LOCAL, "port": 7360}),
        ("gw1", "ispmail-auth-policy", {"host": LOCAL, "port": 7359}),
        ("gw1", "memcached", {"host": "NODE", "port": 11211, "send": "version\r\n", "expect": "VERSION"}),
        ("gw1", "dovecot", {"host": LOCAL, "port": 143, "expect": "* OK"}),
        ("gw1", "postfix@postfix-std", {"host": LOCAL, "port": 10029, "expect": "220 "}),
        ("spam1", "rspamd", {"host": LOCAL, "port": 11333}),
        ("spam1", "redis-server", {"host": LOCAL, "port": 6379, "send": "PING\r\n", "expect": "+PONG"}),
        ("spam1", "unbound", {"host": LOCAL, "port": 53}),
        ("spam1", "postfix@postfix-scan", {"host": LOCAL, "port": 10030, "expect": "220 "}),
        ("web1", "nginx", {"host": LOCAL, "port": 443}),
        ("web1", "php8.2-fpm", {"path": "/run/php/php8.2-fpm.sock"}),
        ("gw1", "postfix@postfix-submit", {"host": LOCAL, "port": 587, "expect": "220 "}),
        ("gw1", "postfix@postfix-pbs", {"host": LOCAL, "port": 2525, "expect": "220 "}),
        ("gw1", "postfix@postfix-route", {"host": LOCAL, "port": 10026, "expect": "220 "}),
        ("gw1", "postfix@postfix-mbox", {"host": LOCAL, "port": 10028, "expect": "220 "}),
        ("gw1", "postfix@-", {"command": "postfix status"}),
        # postscreen behind PROXY protocol: it answers once the header came, so only connect.
        ("spam1", "postfix@postfix-edge", {"host": LOCAL, "port": 10025}),
        ("spam1", "postfix@-", {"command": "postfix status"}),
    ]


def unit_state(host, unit):
    """MainPID, ActiveState and NRestarts of a unit."""
    out = host.check_output(f"systemctl show -p MainPID -p ActiveState -p NRestarts {shlex.quote(unit)}")
    state = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return int(state.get("MainPID") or 0), state.get("ActiveState"), int(state.get("NRestarts") or 0)


def crash(host, unit):
    """SIGKILL the unit's main process; returns (its pid, the restart count before)."""
    pid, active, restarts = unit_state(host, unit)
    assert active == "active", f"{unit} is {active} before the test"
    assert pid > 0, f"systemd knows no main process of {unit}: it cannot see it die (PIDFile= missing?)"
    host.run_test(f"kill -KILL {pid}")
    return pid, restarts


def restarted(host, unit, old_pid, old_restarts, timeout=BACK_WITHIN):
    """Wait until systemd restarted the unit (a new main process, NRestarts grown)."""
    def check():
        pid, active, restarts = unit_state(host, unit)
        return active == "active" and pid not in (0, old_pid) and restarts > old_restarts
    return wait_for(check, timeout)


def probe(lab, lab_host, name, spec):
    spec = dict(spec)
    if spec.get("host") == "NODE":
        spec["host"] = lab["hosts"][name]["node_address"]
    out = lab_host(name).check_output(f"python3 -c {shlex.quote(PROBE)} {shlex.quote(json.dumps(spec))}")
    return json.loads(out)


@pytest.mark.parametrize("name,unit,spec", DAEMONS, ids=[f"{name}-{unit}" for name, unit, _ in DAEMONS])
def test_a_killed_daemon_comes_back_and_serves(lab, lab_host, name, unit, spec):
    host = lab_host(name)
    assert probe(lab, lab_host, name, spec)["ok"], f"{unit} on {name} does not answer before the test"
    started = time.time()
    old_pid, old_restarts = crash(host, unit)
    assert restarted(host, unit, old_pid, old_restarts), (
        f"{unit} on {name}: not restarted within {BACK_WITHIN} s of SIGKILL "
        f"(state {unit_state(host, unit)}); is its restart drop-in there? "
        f"systemctl cat {unit}")
    left = max(1, BACK_WITHIN - (time.time() - started))
    try:
        result = wait_for(lambda: probe(lab, lab_host, name, spec)["ok"], left)
        assert result, f"{unit} on {name} restarted but does not serve: {probe(lab, lab_host, name, spec)}"
    finally:
        # A mailbox server's Dovecot down past the probes' patience is taken over (by
        # design); the tests after this one expect every slot at home.
        if name in lab["groups"]["mailbox"]:
            all_at_home(lab, lab_host)


def test_mail_waits_while_clamd_is_down_and_is_delivered_scanned(lab, lab_host):
    """clamd dies on every gateway as a message for a virus-contract user comes in."""
    gateways = sorted(lab["groups"]["gateway"])
    subject, text = message("alice@example.com")  # example.com: virus check by default
    crashed = {gw: crash(lab_host(gw), "clamav-daemon") for gw in gateways}
    sent = smtp_from_inet1(lab, lab_host, "lb1", 25, ["alice@example.com"], text)
    assert sent["ok"], sent

    def delivered():
        msgs = imap_messages(lab, "gw2", "alice@example.com", subject)
        if msgs:
            return msgs
        # A deferred message is retried after Postfix's minimal_backoff_time (300 s);
        # once clamd is back, a flush of route's queue saves the test that wait.
        for gw in gateways:
            if unit_state(lab_host(gw), "clamav-daemon")[1] == "active":
                lab_host(gw).run("postqueue -c /etc/postfix-route -f")
        return None

    msgs = wait_for(delivered, 120)
    for gw, (pid, restarts) in crashed.items():
        assert restarted(lab_host(gw), "clamav-daemon", pid, restarts, timeout=5), f"clamd on {gw} is not back"
    assert msgs, "the message sent while clamd was down never arrived (lost, or still queued: postqueue -p)"
    assert msgs[0]["X-Virus-Status"] == "Clean", "delivered without a scan"
