"""The directory when a server is lost: two providers replicating each other, local
replicas on every reading host, writes that go to a live provider, replicas that serve
only once complete, and no LDAP side door.

Real clients only: mail through the load balancer, IMAP logins through it, the
repository's playbooks and the hosts' own lookup tools.
"""

import json
import os
import shlex
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from mailclient import PASSWORDS, imap_login, imap_find, message, wait_for
from outside import smtp_from_inet1

BASE = "dc=ispmail,dc=test"
DOMAINS = f"ou=domains,{BASE}"
SYNC = "/usr/local/sbin/ispmail-ldap-sync"
READERS = ("gateway", "spamcheck", "mailbox", "webmail")


def user_dn(address):
    local, domain = address.split("@")
    return f"mail={address},ou={domain},{DOMAINS}"


def slapd_hosts(lab):
    return sorted(set(lab["groups"]["ldap"]).union(*(lab["groups"][group] for group in READERS)))


def sync_status(lab_host, host):
    result = lab_host(host).run(f"{SYNC} status --json")
    try:
        return result.rc, json.loads(result.stdout)
    except ValueError:
        return result.rc, {"error": result.stdout + result.stderr}


def wait_until_caught_up(lab, lab_host, hosts=None, timeout=90):
    """Every given host (default: every slapd) reports lag 0; returns the reports."""
    reports = {}
    deadline = time.time() + timeout
    for host in hosts or slapd_hosts(lab):
        while True:
            rc, report = sync_status(lab_host, host)
            reports[host] = report
            if rc == 0 and report.get("lag_seconds") == 0 or time.time() > deadline:
                break
            time.sleep(1)
    return reports


def ldap_attribute(lab_host, host, address, attribute):
    """An attribute of a user as root reads it over ldapi on that host ('' if absent)."""
    out = lab_host(host).run(
        f"ldapsearch -LLL -o ldif-wrap=no -Q -Y EXTERNAL -H ldapi:/// -b {shlex.quote(user_dn(address))} "
        f"-s base '(objectClass=*)' {attribute}").stdout
    return sorted(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith(f"{attribute}: "))


def container(lab, host, action):
    subprocess.run(["podman", action, lab["hosts"][host]["ansible_host"]], check=True, capture_output=True,
                   env=dict(os.environ, CONTAINERS_CONF=os.path.join(lab["root"], "lab", "containers.conf")))


def apply_users(lab, users, domains=()):
    """Run playbooks/users.yml with only these accounts, the way an operator does."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=lab["root"]) as accounts:
        json.dump({"mail_users": list(users), "mail_domains": list(domains)}, accounts)
        accounts.flush()
        proc = subprocess.run(["ansible-playbook", "-i", "inventories/lab", "playbooks/users.yml",
                               "-e", "@" + accounts.name], capture_output=True, text=True, cwd=lab["root"])
    return proc.returncode, proc.stdout + proc.stderr


def flush_login_caches(lab, lab_host):
    """No cached login or lookup may answer for the directory in these tests."""
    for host in lab["groups"]["gateway"] + lab["groups"]["mailbox"]:
        lab_host(host).run("doveadm auth cache flush")


def imap_works(lab, user):
    imap = imap_login(lab, "lb1", user, PASSWORDS[user])
    imap.logout()
    return True


@pytest.mark.parametrize("group", ("ldap",) + READERS)
def test_every_directory_has_caught_up(lab, lab_host, group):
    reports = wait_until_caught_up(lab, lab_host, lab["groups"][group])
    for host, report in reports.items():
        assert report.get("lag_seconds") == 0, (host, report)
        assert report.get("ready") is True, (host, report)
    if group == "ldap":
        assert all(report.get("writable") for report in reports.values()), reports


def test_providers_replicate_each_other_and_every_replica(lab, lab_host):
    first, second = lab["groups"]["ldap"][:2]
    address = f"mpr-{uuid.uuid4().hex[:8]}@example.com"
    dn = user_dn(address)
    add = (f"dn: {dn}\nobjectClass: inetOrgPerson\nobjectClass: ispmailUser\ncn: {address}\nsn: {address}\n"
           f"mail: {address}\nispmailEnabled: TRUE\nispmailMailboxHost: {lab['groups']['mailbox'][0]}\n")
    lab_host(first).run_test(f"ldapadd -Q -Y EXTERNAL -H ldapi:/// <<'EOF'\n{add}EOF")
    try:
        # Written on the first provider, changed on the second: both directions replicate.
        assert wait_for(lambda: ldap_attribute(lab_host, second, address, "mail"), 20), second
        lab_host(second).run_test(f"ldapmodify -Q -Y EXTERNAL -H ldapi:/// <<'EOF'\ndn: {dn}\nchangetype: modify\n"
                                  f"replace: ispmailQuota\nispmailQuota: 4242\nEOF")
        for host in slapd_hosts(lab):
            assert wait_for(lambda: ldap_attribute(lab_host, host, address, "ispmailQuota") == ["4242"], 20), host
    finally:
        lab_host(first).run(f"ldapdelete -Q -Y EXTERNAL -H ldapi:/// {shlex.quote(dn)}")


def test_the_same_user_changed_on_both_providers_at_once_converges(lab, lab_host):
    first, second = lab["groups"]["ldap"][:2]
    address = "erin@example.com"
    dn = user_dn(address)
    before = {"quota": ldap_attribute(lab_host, first, address, "ispmailQuota"),
              "forward": ldap_attribute(lab_host, first, address, "ispmailForwardTo")}
    changes = {first: f"replace: ispmailQuota\nispmailQuota: {777 * 1024 * 1024}",
               second: "replace: ispmailForwardTo\nispmailForwardTo: dave@example.org"}
    threads = [threading.Thread(target=lab_host(host).run, args=(
        f"ldapmodify -Q -Y EXTERNAL -H ldapi:/// <<'EOF'\ndn: {dn}\nchangetype: modify\n{change}\nEOF",))
        for host, change in changes.items()]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        def entries():
            seen = {host: (tuple(ldap_attribute(lab_host, host, address, "ispmailQuota")),
                           tuple(ldap_attribute(lab_host, host, address, "ispmailForwardTo")))
                    for host in slapd_hosts(lab)}
            return seen if len(set(seen.values())) == 1 else None

        converged = wait_for(entries, 60)
        assert converged, "the providers and replicas did not converge on one entry"
        quota, forward = next(iter(converged.values()))
        # Delta-syncrepl replays changes, not entries: both survive.
        assert quota == (str(777 * 1024 * 1024),) and forward == ("dave@example.org",), converged
    finally:
        restore = [f"replace: ispmailQuota\nispmailQuota: {before['quota'][0]}" if before["quota"]
                   else "delete: ispmailQuota",
                   ("replace: ispmailForwardTo\n" + "".join(f"ispmailForwardTo: {f}\n" for f in before["forward"]))
                   if before["forward"] else "delete: ispmailForwardTo"]
        for change in restore:
            lab_host(first).run(f"ldapmodify -Q -Y EXTERNAL -H ldapi:/// <<'EOF'\ndn: {dn}\nchangetype: modify\n"
                                f"{change.rstrip()}\nEOF")
        wait_until_caught_up(lab, lab_host)


def test_ldap_is_closed_to_the_outside_and_replicas_to_other_hosts(lab, lab_host):
    probe = ("import json,socket,sys\nout={}\nfor h in sys.argv[1:]:\n"
             "  for p in (389,636):\n    s=socket.socket();s.settimeout(2)\n"
             "    try:\n      s.connect((h,p));out[f'{h}:{p}']='open'\n"
             "    except OSError as e:\n      out[f'{h}:{p}']='closed'\n    finally:\n      s.close()\n"
             "print(json.dumps(out))")
    addresses = [lab["hosts"][host]["node_address"] for host in slapd_hosts(lab)]
    seen = json.loads(lab_host("inet1").check_output(f"python3 -c {shlex.quote(probe)} {' '.join(addresses)}"))
    assert set(seen.values()) == {"closed"}, seen
    # A gateway reaches the providers, but not another gateway's replica.
    gw1, gw2 = lab["groups"]["gateway"][:2]
    targets = [lab["hosts"][gw2]["node_address"]] + [lab["hosts"][h]["node_address"] for h in lab["groups"]["ldap"]]
    seen = json.loads(lab_host(gw1).check_output(f"python3 -c {shlex.quote(probe)} {' '.join(targets)}"))
    assert seen.pop(f"{targets[0]}:389") == "closed" and seen.pop(f"{targets[0]}:636") == "closed", seen
    assert set(seen.values()) == {"open"}, seen


def test_a_provider_refuses_simple_binds_without_tls(lab, lab_host):
    provider = lab["groups"]["ldap"][0]
    uri = f"ldap://{provider}.{lab_host(provider).check_output('hostname -d')}/"
    gateway = lab_host(lab["groups"]["gateway"][0])
    bind = f"-D 'cn=gateway,ou=services,{BASE}' -w lab-gateway-secret"
    plain = gateway.run(f"ldapwhoami -x -H {uri} {bind}")
    assert plain.rc == 13, plain.stderr  # confidentialityRequired
    assert gateway.run(f"ldapwhoami -x -ZZ -H {uri} {bind}").rc == 0


# ---------------------------------------------------------------- losing servers

@pytest.fixture
def probe_user(lab, lab_host):
    """A fresh address, removed from the directory afterwards."""
    address = f"ha-{uuid.uuid4().hex[:8]}@example.com"
    yield address
    rc, out = apply_users(lab, [{"address": address, "state": "absent"}])
    assert rc == 0, out


@pytest.mark.parametrize("lost", [0, 1], ids=["first-provider-lost", "second-provider-lost"])
def test_mail_and_logins_work_and_users_yml_writes_while_a_provider_is_down(lab, lab_host, lost, probe_user):
    down = lab["groups"]["ldap"][lost]
    up = [host for host in lab["groups"]["ldap"] if host != down]
    container(lab, down, "stop")
    try:
        flush_login_caches(lab, lab_host)
        assert imap_works(lab, "alice@example.com")
        subject, text = message("alice@example.com")
        sent = smtp_from_inet1(lab, lab_host, "lb1", 25, ["alice@example.com"], text)
        assert sent.get("ok"), sent
        imap = imap_login(lab, "lb1", "alice@example.com", PASSWORDS["alice@example.com"])
        try:
            assert wait_for(lambda: imap_find(imap, "INBOX", subject), 60), "inbound mail was not delivered"
        finally:
            imap.logout()

        rc, out = apply_users(lab, [{"address": probe_user, "password": "probe-password",
                                     "mailbox_host": lab["groups"]["mailbox"][0]}])
        assert rc == 0, out
        assert f"Writing to {up[0]}" in out, out
        assert ldap_attribute(lab_host, up[0], probe_user, "mail") == [probe_user]
    finally:
        container(lab, down, "start")
    # The returning provider catches up, and so does every replica.
    reports = wait_until_caught_up(lab, lab_host, timeout=120)
    assert all(r.get("lag_seconds") == 0 for r in reports.values()), reports
    for host in slapd_hosts(lab):
        assert ldap_attribute(lab_host, host, probe_user, "mail") == [probe_user], host


def test_with_every_provider_down_users_yml_fails_naming_them_and_writes_nothing(lab, lab_host, probe_user):
    providers = lab["groups"]["ldap"]
    user = "carol@example.org"
    subject, text = message(user)
    for host in providers:
        container(lab, host, "stop")
    try:
        # The replicas still serve the gateways: inbound mail is accepted.
        sent = smtp_from_inet1(lab, lab_host, "lb1", 25, [user], text)
        assert sent.get("ok"), sent
        rc, out = apply_users(lab, [{"address": probe_user, "password": "probe-password"}])
        assert rc != 0
        assert "No LDAP provider can take writes" in out, out
        for host in providers:
            assert f"{host}: unreachable" in out, out
        # A mailbox server without a provider has no lease (decision 0010): it cannot tell
        # this from being cut off while another takes its users over, so it refuses them.
        assert wait_for(lambda: not login_works(lab, user), timeout=60), "a server served without a lease"
    finally:
        for host in providers:
            container(lab, host, "start")
    wait_until_caught_up(lab, lab_host, timeout=120)
    for host in slapd_hosts(lab):
        assert ldap_attribute(lab_host, host, probe_user, "mail") == [], host
    # Back: the lease returns, and the mail accepted meanwhile is there, once.
    assert wait_for(lambda: login_finds(lab, user, subject), timeout=180), "mail or logins did not come back"


def login_works(lab, user):
    try:
        return imap_works(lab, user)
    except Exception:  # refused: the fence's temporary failure
        return False


def login_finds(lab, user, subject):
    try:
        imap = imap_login(lab, "lb1", user, PASSWORDS[user])
    except Exception:
        return []
    try:
        return len(imap_find(imap, "INBOX", subject)) == 1
    finally:
        imap.logout()


def test_a_wiped_replica_refills_and_never_answers_user_unknown_meanwhile(lab, lab_host):
    gateway = lab["groups"]["gateway"][0]
    host = lab_host(gateway)
    table = "/etc/postfix/ldap/users.cf"  # role postfix_gateway's lookup of existing users
    # Look alice up every 0.1 s through Postfix's own LDAP client while the replica is
    # stopped, wiped and restarted (however long that takes): each answer is alice
    # (found), or an error (Postfix defers). Never "not found". postmap exits 1 both for
    # "not found" and for a failed query; only the latter says "query error".
    host.run_test("rm -f /tmp/lookups.stop")
    loop = (f"while [ ! -e /tmp/lookups.stop ]; do "
            f"r=$(postmap -q alice@example.com ldap:{table} 2>/tmp/lookup.err); rc=$?; "
            f"if [ -n \"$r\" ]; then echo found; elif grep -q 'query error' /tmp/lookup.err; then echo error; "
            f"elif [ $rc -eq 1 ]; then echo MISSING; else echo error$rc; fi; "
            f"nft list table inet ispmail_ldap_gate >/dev/null 2>&1 && echo gate-closed; sleep 0.1; done")
    host.run_test(f"nohup sh -c {shlex.quote(loop)} > /tmp/lookups.log 2>&1 &")
    time.sleep(2)
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    host.run_test("systemctl stop slapd && rm -f /var/lib/ldap/data.mdb /var/lib/ldap/lock.mdb && systemctl start slapd")

    # slapd's start closed the gate; its opener says when the refilled copy let it open.
    def gate_opened():
        log = host.check_output(f"journalctl -u ispmail-ldap-gate --since '{since}' --no-pager -o cat")
        return [line for line in log.splitlines() if line.endswith("gate open")]
    opened = wait_for(gate_opened, 120)
    time.sleep(3)  # lookups once the gate is open again
    host.run_test("touch /tmp/lookups.stop")
    time.sleep(1)
    seen = host.check_output("cat /tmp/lookups.log").split()
    assert "MISSING" not in seen, seen
    assert seen.count("found") > 20, seen
    assert opened, "the gate opener never reported the gate open after the restart"
    assert opened[-1].startswith("ready after"), opened  # opened because caught up, not on timeout
    reports = wait_until_caught_up(lab, lab_host, [gateway])
    assert reports[gateway].get("lag_seconds") == 0, reports
    assert host.run("nft list table inet ispmail_ldap_gate").rc != 0, "the gate stayed closed"


def test_repeated_failed_binds_lock_the_account_until_the_lock_expires(lab, lab_host, probe_user):
    rc, out = apply_users(lab, [{"address": probe_user, "password": "probe-right-password",
                                 "mailbox_host": lab["groups"]["mailbox"][0]}])
    assert rc == 0, out
    wait_until_caught_up(lab, lab_host)
    provider = lab["groups"]["ldap"][0]
    gateway = lab_host(lab["groups"]["gateway"][0])
    uri = f"ldap://{provider}.{gateway.check_output('hostname -d')}/"

    def bind(password, host=gateway, server=uri):
        return host.run(f"ldapwhoami -x -ZZ -H {server} -D {shlex.quote(user_dn(probe_user))} "
                        f"-w {shlex.quote(password)}").rc

    assert bind("probe-right-password") == 0
    assert [bind(f"guess-{n}") for n in range(20)] == [49] * 20
    locked_at = time.time()
    # Locked on the provider, and, once the lock has replicated, on a local replica too.
    assert bind("probe-right-password") == 49
    assert wait_for(lambda: bind("probe-right-password", server="ldap://localhost/") == 49, 20)
    PASSWORDS[probe_user] = "probe-right-password"
    try:
        with pytest.raises(Exception):
            imap_works(lab, probe_user)
        # ldap_lockout_duration is 30 s in the lab.
        assert wait_for(lambda: bind("probe-right-password") == 0, 60)
        print(f"lock lasted {time.time() - locked_at:.0f} s")
        flush_login_caches(lab, lab_host)
        assert wait_for(lambda: _imap_ok(lab, probe_user), 30)
    finally:
        PASSWORDS.pop(probe_user, None)


def _imap_ok(lab, user):
    try:
        return imap_works(lab, user)
    except Exception:
        return False
