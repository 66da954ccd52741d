"""The mailbox tier through its real path: LMTP into the user's mailbox server, read back
over IMAP and POP3 through the gateways' relay, quota, keyword filters, ManageSieve,
one server per user, and moving a user."""

import re
import shlex
import smtplib
import subprocess
import time

import pytest

from mailclient import (PASSWORDS, ManageSieve, address, imap_find, imap_login, lmtp_deliver, message,
                        pop3_retrieve_all, tls_context, wait_for)


def user_attribute(lab_host, user, attribute):
    out = lab_host("ldap1").check_output(
        f"ldapsearch -Q -LLL -Y EXTERNAL -H ldapi:/// -b ou=domains,dc=ispmail,dc=test '(mail={user})' {attribute}")
    found = re.search(rf"{attribute}: (\S+)", out)
    return found.group(1) if found else None


def mailbox_host(lab_host, user):
    return user_attribute(lab_host, user, "ispmailMailboxHost")


def test_delivered_mail_is_read_over_imap_and_pop3_through_two_gateways(lab, lab_host):
    user = "alice@example.com"
    subject, text = message(user)
    assert lmtp_deliver(lab, mailbox_host(lab_host, user), user, text) == {}
    imap = imap_login(lab, "gw1", user, PASSWORDS[user])
    try:
        assert imap_find(imap, "INBOX", subject)
    finally:
        imap.logout()
    messages = pop3_retrieve_all(lab, "gw2", user, PASSWORDS[user])
    assert any(subject in m for m in messages)


def test_wrong_password_is_refused_by_the_relay(lab):
    with pytest.raises(Exception, match="AUTHENTICATIONFAILED|Authentication failed"):
        imap_login(lab, "gw3", "alice@example.com", "not-her-password")


def test_every_session_of_a_user_lands_on_one_mailbox_server(lab, lab_host):
    user = "carol@example.org"
    pinned = mailbox_host(lab_host, user)
    sessions = [imap_login(lab, gateway, user, PASSWORDS[user]) for gateway in lab["groups"]["gateway"]]
    try:
        for server in lab["groups"]["mailbox"]:
            who = lab_host(server).check_output(f"doveadm who {user}")
            if server == pinned:
                count = re.search(rf"{re.escape(user)}\s+(\d+)\s+imap", who)
                assert count and int(count.group(1)) == len(sessions), who
                # The relay passes the real client address on, not its own.
                gateways = {lab["hosts"][g]["node_address"] for g in lab["groups"]["gateway"]}
                assert not gateways & set(re.findall(r"\d+\.\d+\.\d+\.\d+", who)), who
            else:
                assert user not in who, f"{user} has a session on {server}, pinned to {pinned}"
    finally:
        for imap in sessions:
            imap.logout()


def test_quota_is_shown_and_over_quota_delivery_fails_permanently(lab, lab_host):
    user = "dave@example.org"  # 10M in the lab accounts
    imap = imap_login(lab, "gw1", user, PASSWORDS[user])
    try:
        status, data = imap.getquotaroot("INBOX")
        assert status == "OK"
        usage, limit = map(int, re.search(rb"STORAGE (\d+) (\d+)", data[1][0]).groups())
        assert limit == 10 * 1024
    finally:
        imap.logout()
    _, text = message(user, body="x" * 76 + "\r\n" * 0 + ("y" * 998 + "\r\n") * 11000)
    with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused)) as failure:
        lmtp_deliver(lab, mailbox_host(lab_host, user), user, text)
    assert "552" in str(failure.value) and "5.2.2" in str(failure.value)


def test_keyword_filters_from_ldap_file_and_discard(lab, lab_host):
    user = "carol@example.org"  # Subject "newsletter" -> News; From spammer@example.net -> discard
    host = mailbox_host(lab_host, user)
    filed, text_filed = message(user, subject="Weekly newsletter " + str(time.time()))
    lmtp_deliver(lab, host, user, text_filed)
    dropped, text_dropped = message(user, sender="spammer@example.net")
    lmtp_deliver(lab, host, user, text_dropped, sender="spammer@example.net")
    kept, text = message(user)
    lmtp_deliver(lab, host, user, text)
    imap = imap_login(lab, "gw2", user, PASSWORDS[user])
    try:
        assert imap_find(imap, "News", filed)
        assert not imap_find(imap, "INBOX", filed)
        assert not imap_find(imap, "INBOX", dropped)
        assert imap_find(imap, "INBOX", kept)
    finally:
        imap.logout()
    # The resident daemon decided (not the per-delivery helper, Sieve's fallback without it).
    message_ids = re.findall(r"Message-ID: (<[^>]+>)", text_filed + text_dropped)
    log = lab_host(host).check_output("journalctl -q -o cat -u ispmail-keyword-filter.service -n 200")
    assert f"{message_ids[0]} for {user}: folder:News" in log, log[-2000:]
    assert f"{message_ids[1]} for {user}: discard" in log, log[-2000:]


def test_managesieve_script_uploaded_through_the_relay_takes_effect(lab, lab_host):
    user = "dave@example.org"
    sieve = ManageSieve(lab, "gw3")
    try:
        sieve.login(user, PASSWORDS[user])
        sieve.put_active("lab-test", 'require ["fileinto", "mailbox"];\n'
                                     'if header :contains "subject" "project" { fileinto :create "Projects"; }\n')
    finally:
        sieve.close()
    subject, text = message(user, subject=f"project plan {time.time()}")
    lmtp_deliver(lab, mailbox_host(lab_host, user), user, text)
    imap = imap_login(lab, "gw1", user, PASSWORDS[user])
    try:
        assert imap_find(imap, "Projects", subject)
    finally:
        imap.logout()


def test_moving_a_user_keeps_all_mail(lab, lab_host):
    user = "bob@example.com"
    before = mailbox_host(lab_host, user)
    contract = user_attribute(lab_host, user, "ispmailVirusCheck")
    target = next(h for h in lab["groups"]["mailbox"] if h != before)
    subjects = []
    for _ in range(3):
        subject, text = message(user)
        lmtp_deliver(lab, before, user, text)
        subjects.append(subject)
    proc = subprocess.run(
        ["ansible-playbook", "-i", "inventories/lab", "playbooks/move_user.yml",
         "-e", f"move_user_address={user}", "-e", f"move_user_to={target}"],
        capture_output=True, text=True, cwd=lab["root"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert mailbox_host(lab_host, user) == target
    # Moving changes the mailbox server only, never the user's contracts.
    assert user_attribute(lab_host, user, "ispmailVirusCheck") == contract == "FALSE"
    imap = imap_login(lab, "gw1", user, PASSWORDS[user])
    try:
        for subject in subjects:
            assert imap_find(imap, "INBOX", subject), subject
    finally:
        imap.logout()


PROXY_LOGIN = r'''
import socket, struct, sys
src, dst = socket.inet_aton("{client}"), socket.inet_aton("{gateway}")
header = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12) + src + dst + struct.pack("!HH", 40000, 10143)
s = socket.create_connection(("{gateway}", 10143), timeout=10)
s.sendall(header)
f = s.makefile("rb")
try:
    greeting = f.readline().decode().strip()
except ConnectionError:
    greeting = "<dropped>"
print("greeting:", greeting)
if greeting.startswith("* OK"):
    import ssl
    s.sendall(b"s STARTTLS\r\n")
    f.readline()
    t = ssl.create_default_context(cafile="{ca}").wrap_socket(s, server_hostname="{gateway}")
    t.sendall(b"a LOGIN {user} {password}\r\n")
    print(t.makefile("rb").readline().decode().strip())
'''


@pytest.mark.parametrize("sender, trusted", [("lb1", True), ("gw2", False)])
def test_proxy_protocol_is_trusted_only_from_the_load_balancer(lab, lab_host, sender, trusted):
    user = "alice@example.com"
    script = PROXY_LOGIN.format(client="192.0.2.77", gateway=lab["hosts"]["gw1"]["node_address"],
                                ca=lab["platform_ca_certificate"],
                                user=user, password=PASSWORDS[user])
    result = lab_host(sender).run(f"python3 -c '{script}'")
    if trusted:
        assert "a OK" in result.stdout, result.stdout + result.stderr
        log = lab_host(mailbox_host(lab_host, user)).check_output(
            f"journalctl -u dovecot --since '-1 min' --no-pager | grep 'user=<{user}>' || true")
        assert "rip=192.0.2.77" in log, log
    else:
        # An untrusted PROXY header makes Dovecot drop the connection before its greeting.
        assert result.rc == 0 and "greeting: " in result.stdout, result.stderr
        assert "greeting: * OK" not in result.stdout, result.stdout


IMAP_LOGIN = ("import imaplib, ssl, sys\n"
              "imap = imaplib.IMAP4(sys.argv[1], 143, timeout=30)\n"
              "imap.starttls(ssl.create_default_context(cafile=sys.argv[4]))\n"
              "try:\n    imap.login(sys.argv[2], sys.argv[3])\n    print('OK')\n"
              "except imaplib.IMAP4.error as exc:\n    print('NO', exc)\n")


def test_a_mailbox_server_refuses_a_user_pinned_to_another(lab, lab_host):
    # Two servers serving one Maildir corrupt it (decision 0002): even a login from a
    # gateway (the only hosts that reach these ports) is refused by the wrong server.
    user = "alice@example.com"
    home = mailbox_host(lab_host, user)
    other = next(name for name in lab["groups"]["mailbox"] if name != home)

    def login(server):
        return lab_host("gw1").check_output(
            f"python3 -c {shlex.quote(IMAP_LOGIN)} {address(lab, server)} {user} {shlex.quote(PASSWORDS[user])} "
            f"{lab['platform_ca_certificate']}")
    assert login(home).startswith("OK")
    assert login(other).startswith("NO")


def test_the_relay_and_lmtp_reach_the_mailbox_server_over_verified_tls(lab, lab_host):
    # The relay passes the user's password on, and LMTP carries the mail: neither may
    # cross the network in clear text.
    user = "carol@example.org"
    home = lab_host(mailbox_host(lab_host, user))
    since = home.check_output("date +%s")
    subject, text = message(user)
    with smtplib.SMTP(address(lab, "lb1"), 587, timeout=30) as smtp:
        smtp.starttls(context=tls_context(lab))
        smtp.login("alice@example.com", PASSWORDS["alice@example.com"])
        smtp.sendmail("alice@example.com", [user], text.encode())
    imap = imap_login(lab, "lb1", user, PASSWORDS[user])
    try:
        assert wait_for(lambda: imap_find(imap, "INBOX", subject), 30)
    finally:
        imap.logout()
    logins = home.check_output(f"journalctl --no-pager --since=@{since} -t dovecot "
                               f"| grep 'imap-login: Login: user=<{user}>'")
    assert logins and all(", TLS," in line for line in logins.splitlines()), logins
    lmtp = "\n".join(lab_host(gateway).run(f"journalctl --no-pager --since=@{since} -t postfix-mbox/lmtp").stdout
                     for gateway in lab["groups"]["gateway"])
    assert re.search(r"Verified TLS connection established to mbox\d", lmtp), lmtp[-2000:]
