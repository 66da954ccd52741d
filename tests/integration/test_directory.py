"""The directory in the lab: binds, per-service visibility, replicas on every gateway,
and the replicas' behaviour while the provider is down."""

import json
import shlex
import subprocess
import time

import pytest

BASE = "dc=ispmail,dc=test"
DOMAINS = f"ou=domains,{BASE}"
ALICE = f"mail=alice@example.com,ou=example.com,{DOMAINS}"


def service(name):
    return f"cn={name},ou=services,{BASE}", f"lab-{name}-secret"


def ldapsearch(host, bind, base, ldap_filter, *attrs, uri="ldap://localhost/"):
    dn, password = bind
    cmd = (f"ldapsearch -LLL -o ldif-wrap=no -x -ZZ -H {uri} -D '{dn}' -w '{password}' "
           f"-b '{base}' '{ldap_filter}' {' '.join(shlex.quote(a) for a in attrs)}")
    return host.run(cmd)


def test_user_binds_with_the_password_set_by_the_module(lab_host):
    ldap = lab_host("ldap1")
    ok = ldap.run(f"ldapwhoami -x -ZZ -H ldap://localhost/ -D '{ALICE}' -w alice-lab-password")
    assert ok.rc == 0 and ok.stdout.strip() == f"dn:{ALICE}", ok.stderr
    wrong = ldap.run(f"ldapwhoami -x -ZZ -H ldap://localhost/ -D '{ALICE}' -w not-her-password")
    assert wrong.rc == 49, wrong.stderr  # invalidCredentials


def test_anonymous_sees_nothing(lab_host):
    ldap = lab_host("ldap1")
    anonymous = ldap.run(f"ldapsearch -LLL -x -ZZ -H ldap://localhost/ -b '{DOMAINS}' '(mail=*)' mail")
    assert anonymous.rc in (0, 32), anonymous.stderr  # success with nothing, or no such object
    assert "alice@example.com" not in anonymous.stdout
    # The same search with a service account does find her: the emptiness is the ACL.
    assert "alice@example.com" in ldapsearch(ldap, service("gateway"), DOMAINS, "(mail=*)", "mail").stdout


def test_password_hashes_are_readable_by_no_service(lab_host):
    ldap = lab_host("ldap1")
    for name in ("gateway", "mailbox", "webmail"):
        result = ldapsearch(ldap, service(name), DOMAINS, "(mail=alice@example.com)", "userPassword", "mail")
        assert result.rc == 0, result.stderr
        assert "userPassword" not in result.stdout, name


def test_each_service_sees_only_its_attributes(lab_host):
    ldap = lab_host("ldap1")
    webmail = ldapsearch(ldap, service("webmail"), DOMAINS, "(mail=alice@example.com)", "*").stdout
    assert "mail: alice@example.com" in webmail
    assert "ispmailQuota" not in webmail and "ispmailMailboxHost" not in webmail
    mailbox = ldapsearch(ldap, service("mailbox"), DOMAINS, "(mail=alice@example.com)", "*").stdout
    assert "ispmailQuota: 1073741824" in mailbox
    gateway = ldapsearch(ldap, service("gateway"), DOMAINS, "(mail=alice@example.com)", "*").stdout
    assert "ispmailMailboxHost:" in gateway and "ispmailQuota" not in gateway


def test_user_changes_own_password(lab_host):
    ldap = lab_host("ldap1")
    change = ldap.run(f"ldappasswd -x -ZZ -H ldap://localhost/ -D '{ALICE}' -w alice-lab-password "
                      f"-s temporary-password '{ALICE}'")
    assert change.rc == 0, change.stderr
    try:
        assert ldap.run(f"ldapwhoami -x -ZZ -D '{ALICE}' -w temporary-password").rc == 0
    finally:
        ldap.run(f"ldappasswd -x -ZZ -D '{ALICE}' -w temporary-password -s alice-lab-password '{ALICE}'")
    assert ldap.run(f"ldapwhoami -x -ZZ -D '{ALICE}' -w alice-lab-password").rc == 0


@pytest.mark.group("gateway")
def test_gateway_answers_from_its_local_replica(lab_host, lab_hostname):
    result = ldapsearch(lab_host(lab_hostname), service("gateway"), DOMAINS, "(mail=carol@example.org)",
                        "ispmailMailboxHost", "ispmailVirusCheck")
    assert result.rc == 0, result.stderr
    assert "ispmailVirusCheck: TRUE" in result.stdout


def run_module(lab, module, args):
    """Run one of the repository's modules on ldap1 the way users.yml does."""
    proc = subprocess.run(
        ["ansible", "ldap1", "-i", "inventories/lab", "-m", module, "-a", json.dumps(args)],
        capture_output=True, text=True, cwd=lab["root"])
    return proc.returncode, proc.stdout + proc.stderr


def test_replicas_serve_and_writes_fail_clearly_while_the_provider_is_down(lab, lab_host):
    ldap = lab_host("ldap1")
    ldap.check_output("systemctl stop slapd")
    try:
        for gateway in lab["groups"]["gateway"]:
            result = ldapsearch(lab_host(gateway), service("gateway"), DOMAINS, "(mail=alice@example.com)", "mail")
            assert "mail: alice@example.com" in result.stdout, gateway
        rc, out = run_module(lab, "mail_user", {"base_dn": BASE, "address": "alice@example.com", "quota": "3G"})
        assert rc != 0
        assert "cannot connect" in out, out
    finally:
        ldap.check_output("systemctl start slapd")


def test_write_on_a_replica_is_refused_with_the_provider_named(lab_host):
    gateway = lab_host("gw1")
    dn, password = service("gateway")
    result = gateway.run(f"ldapmodify -x -ZZ -H ldap://localhost/ -D '{dn}' -w '{password}' <<'EOF'\n"
                         f"dn: {ALICE}\nchangetype: modify\nreplace: ispmailQuota\nispmailQuota: 1\nEOF")
    assert result.rc != 0
    assert "ldap://ldap1" in result.stdout + result.stderr


def test_new_user_reaches_every_replica(lab, lab_host):
    rc, out = run_module(lab, "mail_user", {"base_dn": BASE, "address": "replica-probe@example.com",
                                            "mailbox_hosts": lab["groups"]["mailbox"]})
    assert rc == 0, out
    try:
        for gateway in lab["groups"]["gateway"]:
            deadline = time.time() + 20
            while True:
                found = ldapsearch(lab_host(gateway), service("gateway"), DOMAINS,
                                   "(mail=replica-probe@example.com)", "mail").stdout
                if "replica-probe@example.com" in found or time.time() > deadline:
                    break
                time.sleep(0.5)
            assert "replica-probe@example.com" in found, gateway
    finally:
        run_module(lab, "mail_user", {"base_dn": BASE, "address": "replica-probe@example.com", "state": "absent"})
