"""The load balancer: protocol checks, the gateway pool split, rebalancing without
dropping sessions, a failed gateway leaving the pool, and who may see the stats page."""

import base64
import csv
import http.client
import io
import ipaddress
import os
import poplib
import smtplib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mailclient import PASSWORDS, address, forget_pop_before_smtp, imap_messages, message, tls_context, wait_for
from outside import CONNECT, IMAP_FROM_OUTSIDE, POP3_FROM_OUTSIDE, from_inet1, python_in, smtp_from_inet1

ROOT = Path(__file__).resolve().parents[2]
STATS_AUTH = ("ispmail", "lab-stats-secret")  # inventories/lab/group_vars/lb.yml
SMTP_BACKENDS = ["submission", "submissions", "pop_before_smtp"]
POP_BACKENDS = ["pop3", "pop3s", "imap", "imaps", "sieve"]


def stats_port(lab):
    return lab["hosts"]["lb1"]["platform_lb_stats_port"]


def stats_page(lab, path="/", auth=STATS_AUTH, scheme="https"):
    """The stats page from here (the lab host, the lab's operator address), over TLS."""
    request = urllib.request.Request(f"{scheme}://{address(lab, 'lb1')}:{stats_port(lab)}{path}")
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return urllib.request.urlopen(request, timeout=10, context=tls_context(lab) if scheme == "https" else None)


def is_operator(lab, ip):
    return any(ipaddress.ip_address(ip) in ipaddress.ip_network(net) for net in lab["platform_operator_networks"])


def stats(lab):
    """{backend: {server: status}} from the stats page (CSV export)."""
    with stats_page(lab, "/;csv") as response:
        text = response.read().decode().lstrip("# ")
    result = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row["svname"] not in ("FRONTEND", "BACKEND"):
            result.setdefault(row["pxname"], {})[row["svname"]] = row["status"]
    return result


def serving(lab, backend):
    return sorted(server for server, status in stats(lab)[backend].items() if status.startswith("UP"))


def split(lab):
    state = stats(lab)
    smtp = {b: sorted(s for s, st in state[b].items() if not st.startswith("MAINT")) for b in SMTP_BACKENDS}
    pop = {b: sorted(s for s, st in state[b].items() if not st.startswith("MAINT")) for b in POP_BACKENDS}
    return smtp, pop


def rebalance(ratio, drain_timeout=5):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "playbooks/rebalance.yml",
                           "-e", f"lb_gateway_ratio={ratio}", "-e", f"loadbalancer_drain_timeout={drain_timeout}"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


@pytest.fixture
def restore_split(lab):
    yield
    rebalance("2:1")


def test_every_service_is_checked_and_up(lab, lab_host):
    lab_host("lb1").run_test("haproxy -c -f /etc/haproxy/haproxy.cfg")
    state = stats(lab)
    for backend in SMTP_BACKENDS:
        assert serving(lab, backend) == ["gw1", "gw2"], state[backend]
    for backend in POP_BACKENDS:
        assert serving(lab, backend) == ["gw3"], state[backend]


def test_stats_page_serves_the_operators_over_tls(lab):
    lb = address(lab, "lb1")
    # The tests run on the lab host; its address towards the lab is the operators' one.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((lb, 9))
        source = probe.getsockname()[0]
    assert is_operator(lab, source), (source, lab["platform_operator_networks"])
    for auth in (None, (STATS_AUTH[0], "wrong-password")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            stats_page(lab, auth=auth)
        assert refused.value.code == 401, auth
    with stats_page(lab) as response:
        assert response.status == 200
        assert "Statistics Report" in response.read().decode()
    # Not in clear: a plain HTTP request meets the TLS listener and gets no page.
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)):
        stats_page(lab, scheme="http").read()


def test_stats_page_is_dropped_for_the_outside(lab, lab_host):
    # inet1 reaches the load balancer's service address (in the lab, its node_address)...
    lb = address(lab, "lb1")
    assert not is_operator(lab, address(lab, "inet1"))
    assert from_inet1(lab_host, CONNECT, host=lb, port=25, timeout=5)["connected"]
    # ...but not the stats port: port_acl drops the SYN, so the connection times out
    # (HAProxy's own rule would accept it, then close it).
    result = from_inet1(lab_host, CONNECT, host=lb, port=stats_port(lab), timeout=5, tls=True)
    assert not result["connected"] and result["error"].startswith("TimeoutError"), result


def test_haproxy_itself_rejects_the_others(lab, lab_host):
    # From lb1 itself, loopback passes the nftables rule (port_acl always lets lo in): the
    # connection reaches HAProxy from lb1's address, not an operator's, and HAProxy closes
    # it before any TLS.
    lb = address(lab, "lb1")
    assert not is_operator(lab, lb)
    result = python_in(lab_host, "lb1", CONNECT, host=lb, port=stats_port(lab), timeout=10, tls=True)
    # HAProxy's reset may reach the client before its connect() returns (a loaded host);
    # either way no TLS, and no timeout (which would be nftables dropping it).
    reset = "ConnectionResetError" in result.get("error", "")
    assert (result["connected"] or reset) and not result["tls"], result


def test_pop_before_smtp_through_the_load_balancer(lab, lab_host):
    # The load balancer passes inet1's address to the relay (POP pool) and to pbs (SMTP
    # pool) alike, so a POP login authorizes the same client for relaying.
    user = "dave@example.org"
    _, text = message(user, sender=user)
    # Earlier tests may have authorised inet1 within the window.
    forget_pop_before_smtp(lab, lab_host, address(lab, "inet1"))
    refused = smtp_from_inet1(lab, lab_host, "lb1", 2525, [user], text, user)
    assert "Relay access denied" in str(refused), refused
    from_inet1(lab_host, POP3_FROM_OUTSIDE, host=address(lab, "lb1"), user=user, password=PASSWORDS[user])
    result = smtp_from_inet1(lab, lab_host, "lb1", 2525, [user], text, user)
    assert result["ok"], result


def test_mail_submitted_and_read_through_the_load_balancer(lab, lab_host):
    user = "alice@example.com"
    subject, text = message("dave@example.org", sender=user)
    with smtplib.SMTP(address(lab, "lb1"), 587, timeout=30) as smtp:
        smtp.starttls(context=tls_context(lab))
        smtp.login(user, PASSWORDS[user])
        assert smtp.sendmail(user, ["dave@example.org"], text.encode()) == {}
    assert wait_for(lambda: imap_messages(lab, "gw2", "dave@example.org", subject), 30)
    # IMAP from inet1 through lb1 reaches the mailbox server with inet1's own address
    # (PROXY protocol to the relay, then the relay's ID to the backend).
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 2))
    from_inet1(lab_host, IMAP_FROM_OUTSIDE, host=address(lab, "lb1"), user="carol@example.org",
               password=PASSWORDS["carol@example.org"])
    logins = [line for m in lab["groups"]["mailbox"]
              for line in lab_host(m).check_output(f"journalctl -t dovecot --since '{since}' --no-pager").splitlines()
              if "Login: user=<carol@example.org>" in line]
    assert any(f"rip={address(lab, 'inet1')}," in line for line in logins), logins
    middlemen = [address(lab, host) for host in lab["groups"]["lb"] + lab["groups"]["gateway"]]
    assert not any(f"rip={ip}," in line for line in logins for ip in middlemen), logins


def test_rebalancing_keeps_open_sessions_and_survives_a_reload(lab, lab_host, restore_split):
    lb = address(lab, "lb1")
    smtp_sessions = []
    for _ in range(4):  # leastconn spreads them over gw1 and gw2
        smtp = smtplib.SMTP(lb, 587, timeout=60)
        smtp.starttls(context=tls_context(lab))
        smtp.login("alice@example.com", PASSWORDS["alice@example.com"])
        smtp_sessions.append(smtp)
    pop = poplib.POP3_SSL(lb, 995, context=tls_context(lab), timeout=60)
    pop.user("dave@example.org")
    pop.pass_(PASSWORDS["dave@example.org"])

    rebalance("1:2")

    smtp_split, pop_split = split(lab)
    assert all(servers == ["gw1"] for servers in smtp_split.values()), smtp_split
    assert all(servers == ["gw2", "gw3"] for servers in pop_split.values()), pop_split
    # Every open session still works: each sends a message, POP still answers.
    subjects = []
    for smtp in smtp_sessions:
        subject, text = message("dave@example.org", sender="alice@example.com")
        assert smtp.sendmail("alice@example.com", ["dave@example.org"], text.encode()) == {}
        smtp.quit()
        subjects.append(subject)
    assert pop.stat()[0] >= 0
    pop.quit()
    for subject in subjects:
        assert wait_for(lambda s=subject: imap_messages(lab, "gw3", "dave@example.org", s), 30), subject
    # A reload starts from the rendered config, which has the same split.
    lab_host("lb1").run_test("systemctl reload haproxy")
    time.sleep(3)
    assert split(lab) == (smtp_split, pop_split)


def test_a_stopped_postfix_leaves_the_pool_and_no_mail_is_lost(lab, lab_host):
    gw1 = lab_host("gw1")
    gw1.run_test("systemctl stop postfix@postfix-submit")
    try:
        started = time.time()
        assert wait_for(lambda: serving(lab, "submission") == ["gw2"], 20), stats(lab)["submission"]
        out_after = time.time() - started
        subjects = []
        for _ in range(5):
            subject, text = message("dave@example.org", sender="alice@example.com")
            with smtplib.SMTP(address(lab, "lb1"), 587, timeout=30) as smtp:
                smtp.starttls(context=tls_context(lab))
                smtp.login("alice@example.com", PASSWORDS["alice@example.com"])
                assert smtp.sendmail("alice@example.com", ["dave@example.org"], text.encode()) == {}
            subjects.append(subject)
        for subject in subjects:
            assert wait_for(lambda s=subject: imap_messages(lab, "gw3", "dave@example.org", s), 30), subject
        assert out_after < 15
    finally:
        gw1.run_test("systemctl start postfix@postfix-submit")
    assert wait_for(lambda: serving(lab, "submission") == ["gw1", "gw2"], 30)


def test_rolling_maintenance_takes_a_gateway_out_and_puts_it_back(lab):
    # The inventory's 2:1 split, which the rolling maintenance must restore.
    expected = ({b: ["gw1", "gw2"] for b in SMTP_BACKENDS}, {b: ["gw3"] for b in POP_BACKENDS})
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "playbooks/rolling_maintenance.yml",
                           "--limit", "gw3", "-e", f"maintenance_tasks={ROOT}/tests/integration/files/maintenance_check.yml"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "The gateway serves no backend now" in done.stdout
    assert wait_for(lambda: split(lab) == expected, 20), split(lab)
