"""The gateway's six Postfix instances through the real path: mail from inet1 (the
outside world) or from the test runner, read back over IMAP through the relay."""

import concurrent.futures
import email
import json
import shlex
import smtplib
import time
import uuid
from email.header import Header
from email.message import EmailMessage

import pytest

from mailclient import (PASSWORDS, address, forget_pop_before_smtp, imap_messages, message, tls_context,
                        wait_for)
from outside import POP3_FROM_OUTSIDE, SMTP_FROM_OUTSIDE, from_inet1, smtp_from_inet1

INSTANCES = ["submit", "pbs", "route", "vscan", "mbox", "std"]
EICAR = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

def arrived(lab, user, subject, gateway="gw2", timeout=30, key="SUBJECT"):
    return wait_for(lambda: imap_messages(lab, gateway, user, subject, key=key), timeout) or []


def hops(msg):
    """The Postfix instances (and LMTP) named in the Received headers, oldest first."""
    found = []
    for header in reversed(msg.get_all("Received", [])):
        text = " ".join(str(header).split())
        found += [name for name in INSTANCES if f"(Postfix-{name})" in text]
        if "with LMTP" in text:
            found.append("lmtp")
    return found


def held_for(lab_host, gateway, user):
    """Messages in vscan's hold queue for user."""
    lines = lab_host(gateway).check_output("postqueue -c /etc/postfix-vscan -j").splitlines()
    return sum(1 for line in lines if line and json.loads(line)["queue_name"] == "hold" and user in line)


def held_on_any_gateway(lab, lab_host, user):
    """held_for summed over the gateways: inbound mail goes to any of them (the gateway pool)."""
    return sum(held_for(lab_host, gateway, user) for gateway in lab["groups"]["gateway"])


@pytest.mark.group("gateway")
def test_six_instances_run_from_postmulti_and_pass_postfix_check(lab_host, lab_hostname):
    host = lab_host(lab_hostname)
    listed = host.check_output("postmulti -l")
    for name in INSTANCES:
        assert f"postfix-{name}" in listed
        assert host.service(f"postfix@postfix-{name}").is_running
        host.run_test(f"postfix -c /etc/postfix-{name} check")
        queue = host.check_output(f"postconf -c /etc/postfix-{name} -h queue_directory")
        assert queue == f"/var/spool/postfix-{name}"
    assert host.service("clamav-daemon").is_running
    assert host.service("clamav-milter").is_running
    assert host.service("ispmail-operator-filter").is_running
    assert host.service("memcached").is_running


@pytest.mark.group("gateway")
def test_clamav_milter_is_the_main_process_of_its_own_unit(lab_host, lab_hostname):
    """Not Debian's init script, whose daemonizing start could hold the boot for 5 minutes."""
    host = lab_host(lab_hostname)
    unit = dict(line.split("=", 1) for line in host.check_output(
        "systemctl show -p FragmentPath -p Type -p MainPID clamav-milter").splitlines())
    assert unit["FragmentPath"] == "/etc/systemd/system/clamav-milter.service", unit
    assert unit["Type"] == "simple", unit
    assert host.check_output(f"cat /proc/{unit['MainPID']}/comm") == "clamav-milter", unit


def test_mail_from_the_internet_reaches_the_maildir_through_every_hop(lab, lab_host):
    subject, text = message("alice@example.com")
    assert smtp_from_inet1(lab, lab_host, "lb1", 25, ["alice@example.com"], text)["ok"]
    [msg] = arrived(lab, "alice@example.com", subject)
    # example.com has virus check by default: std -> route -> vscan -> mbox -> LMTP.
    assert hops(msg) == ["std", "route", "vscan", "mbox", "lmtp"]
    assert msg["X-Virus-Status"] == "Clean"


def test_one_message_is_routed_per_recipient_contract(lab, lab_host):
    rcpts = ["alice@example.com", "bob@example.com", "carol@example.org", "dave@example.org"]
    subject, text = message(", ".join(rcpts))
    assert smtp_from_inet1(lab, lab_host, "lb1", 25, rcpts, text)["ok"]
    expected = {
        "alice@example.com": True,   # domain default on
        "bob@example.com": False,    # own contract off, domain on
        "carol@example.org": True,   # own contract on, domain off
        "dave@example.org": False,   # domain default off
    }
    for user, scanned in expected.items():
        msgs = arrived(lab, user, subject)
        assert msgs, f"{user} got nothing"
        assert ("vscan" in hops(msgs[0])) is scanned, (user, hops(msgs[0]))


def eicar_message(rcpts, sender):
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, ", ".join(rcpts)
    msg["Subject"] = f"eicar {uuid.uuid4().hex}"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.net>"
    msg.set_content("see the attachment\n")
    msg.add_attachment(EICAR.encode(), maintype="application", subtype="octet-stream", filename="eicar.com")
    return msg["Subject"], msg.as_string()


def test_eicar_is_held_for_a_virus_contract_and_passes_without_one(lab, lab_host):
    sender = "alice@example.com"
    held_before = held_on_any_gateway(lab, lab_host, "carol@example.org")
    subject, text = eicar_message(["carol@example.org", "dave@example.org"], sender)
    result = smtp_from_inet1(lab, lab_host, "lb1", 25, ["carol@example.org", "dave@example.org"], text, sender)
    assert result["ok"], result
    # dave has no contract: the message arrives as sent, attachment included.
    [plain] = arrived(lab, "dave@example.org", subject)
    assert EICAR in plain.as_string() or "eicar.com" in plain.as_string()
    # carol has one: her copy is held, and example.org's Japanese notice arrives instead.
    # The notice quotes the original subject in its body.
    [notice] = arrived(lab, "carol@example.org", subject, key="BODY")
    assert notice["Subject"] == "ウイルス検出のお知らせ"
    assert notice["From"] == "postmaster@example.org"
    assert "お客様宛てのメールからウイルスが検出された" in notice.get_body().get_content()
    assert not imap_messages(lab, "gw2", "carol@example.org", subject)
    # example.org also tells the sender.
    [to_sender] = arrived(lab, sender, subject, key="BODY")
    assert to_sender["Subject"] == "ウイルス検出のお知らせ"
    assert held_on_any_gateway(lab, lab_host, "carol@example.org") == held_before + 1


def test_a_forward_to_a_virus_contract_is_scanned_too(lab, lab_host):
    # bob (no contract) forwards to carol (contract) and keeps a copy.
    subject, text = eicar_message(["bob@example.com"], "someone@example.net")
    assert smtp_from_inet1(lab, lab_host, "lb1", 25, ["bob@example.com"], text)["ok"]
    assert arrived(lab, "bob@example.com", subject)
    # carol's forwarded copy was scanned: held, and her domain's notice came instead.
    [notice] = arrived(lab, "carol@example.org", subject, key="BODY")
    assert notice["Subject"] == "ウイルス検出のお知らせ"
    assert not imap_messages(lab, "gw2", "carol@example.org", subject)


@pytest.mark.parametrize("user, copy_to, keeps_copy", [
    ("bob@example.com", "carol@example.org", True),
    ("erin@example.com", "alice@example.com", False),
])
def test_forwarding_with_and_without_a_copy(lab, lab_host, user, copy_to, keeps_copy):
    subject, text = message(user)
    assert smtp_from_inet1(lab, lab_host, "lb1", 25, [user], text)["ok"]
    assert arrived(lab, copy_to, subject)
    time.sleep(2)
    assert bool(imap_messages(lab, "gw3", user, subject)) is keeps_copy


def test_submission_offers_auth_only_after_tls_and_checks_the_password(lab):
    with smtplib.SMTP(address(lab, "gw1"), 587, timeout=30) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        # Port 587 requires STARTTLS before mail.
        code, _ = smtp.mail("alice@example.com")
        assert code == 530
        smtp.rset()
        smtp.starttls(context=tls_context(lab))
        smtp.ehlo()
        assert "PLAIN" in smtp.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            smtp.login("alice@example.com", "not-her-password")
        assert failed.value.smtp_code == 535


def test_submission_relays_for_its_user_only_with_their_own_sender(lab):
    subject, text = message("dave@example.org", sender="alice@example.com")
    with smtplib.SMTP_SSL(address(lab, "gw2"), 465, context=tls_context(lab), timeout=30) as smtp:
        smtp.login("alice@example.com", PASSWORDS["alice@example.com"])
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail("bob@example.com", ["dave@example.org"], text.encode())
        assert refused.value.recipients["dave@example.org"][0] == 553
        assert smtp.sendmail("alice@example.com", ["dave@example.org"], text.encode()) == {}
    [msg] = arrived(lab, "dave@example.org", subject)
    assert hops(msg)[:2] == ["submit", "route"]


def test_relay_attempts_from_outside_fail(lab, lab_host):
    _, text = message("someone@example.org")
    for port in (25, 2525):
        # pbs takes only senders in hosted domains: this one is, the recipient is not.
        sender = "someone@example.net" if port == 25 else "dave@example.org"
        result = smtp_from_inet1(lab, lab_host, "lb1", port, ["victim@example.net"], text, sender)
        assert not result["ok"]
        code, reply = result["error"]["victim@example.net"]
        assert code == 554 and "Relay access denied" in reply, (port, result)
    # Unauthenticated submission after TLS is refused as well.
    with smtplib.SMTP(address(lab, "gw1"), 587, timeout=30) as smtp:
        smtp.starttls(context=tls_context(lab))
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail("someone@example.org", ["victim@example.net"], text.encode())


def test_smtp_smuggling_does_not_split_a_message(lab, lab_host):
    # A classic smuggling payload: "<CR><LF>.<LF>" then a second transaction. With
    # smtpd_forbid_bare_newline only <CR><LF>.<CR><LF> ends DATA, so it stays one message.
    tag = uuid.uuid4().hex
    raw = ["MAIL FROM:<someone@example.net>\r\n", "RCPT TO:<dave@example.org>\r\n", "DATA\r\n",
           f"Subject: outer-{tag}\r\n\r\nfirst\r\n.\nMAIL FROM:<x@example.net>\r\nRCPT TO:<dave@example.org>\r\n"
           f"DATA\r\nSubject: smuggled-{tag}\r\n\r\nsecond\r\n.\r\n"]
    result = from_inet1(lab_host, SMTP_FROM_OUTSIDE, host=address(lab, "lb1"), port=25, raw=raw)
    assert [code for code, _ in result["replies"]] == [250, 250, 354, 250], result
    [outer] = arrived(lab, "dave@example.org", f"outer-{tag}")
    assert f"smuggled-{tag}" in outer.as_string()
    assert not imap_messages(lab, "gw2", "dave@example.org", f"smuggled-{tag}")


def test_pop_before_smtp_across_gateways_and_expiry(lab, lab_host):
    window = int(lab["hosts"]["gw1"].get("pop_before_smtp_window", 30))
    user = "dave@example.org"
    inet1 = address(lab, "inet1")
    subject, text = message(user, sender="dave@example.org")
    forget_pop_before_smtp(lab, lab_host, inet1)  # earlier tests logged in from inet1
    # Not logged in yet (or expired): relaying is refused.
    refused = smtp_from_inet1(lab, lab_host, "lb1", 2525, [user], text, "dave@example.org")
    assert "Relay access denied" in json.dumps(refused), refused
    # A POP3 login (the LB's POP pool) authorizes inet1's address on every gateway, so
    # pbs on any gateway of the SMTP pool relays for it.
    from_inet1(lab_host, POP3_FROM_OUTSIDE, host=address(lab, "lb1"), user=user, password=PASSWORDS[user])
    started = time.time()
    for gateway in lab["groups"]["gateway"]:
        assert wait_for(lambda g=gateway: pbs_stored(lab, lab_host, g, inet1), 10), gateway
    result = smtp_from_inet1(lab, lab_host, "lb1", 2525, [user], text, "dave@example.org")
    assert result["ok"], result
    msgs = arrived(lab, user, subject)
    assert msgs and "pbs" in hops(msgs[0])
    # After the window the same client is refused again.
    time.sleep(max(0, window + 2 - (time.time() - started)))
    expired = smtp_from_inet1(lab, lab_host, "lb1", 2525, [user], text, "dave@example.org")
    assert "Relay access denied" in json.dumps(expired), expired


def test_operator_keyword_filters_tag_discard_and_hold(lab, lab_host):
    tag = uuid.uuid4().hex
    held_before = held_on_any_gateway(lab, lab_host, "alice@example.com")
    # example.org tags 未承諾広告 (the subject is RFC 2047 encoded, as Japanese mail is).
    encoded = Header("【未承諾広告】", "utf-8").encode()
    _, text = message("carol@example.org", subject=f"{encoded} tagged-{tag}")
    assert smtp_from_inet1(lab, lab_host, "lb1", 25, ["carol@example.org"], text)["ok"]
    [tagged] = arrived(lab, "carol@example.org", f"tagged-{tag}")
    assert "未承諾広告" in tagged["X-ISPmail-Filter"]
    # example.com discards one subject and holds one mailer.
    _, text = message("alice@example.com", subject=f"WIN A FREE PRIZE discarded-{tag}")
    assert smtp_from_inet1(lab, lab_host, "lb1", 25, ["alice@example.com"], text)["ok"]
    _, text = message("alice@example.com", subject=f"held-{tag}", extra_headers="X-Mailer: BulkMailer 3\r\n")
    assert smtp_from_inet1(lab, lab_host, "lb1", 25, ["alice@example.com"], text)["ok"]
    # A message sent after both arrives, so the two had their chance.
    after, text = message("alice@example.com")
    assert smtp_from_inet1(lab, lab_host, "lb1", 25, ["alice@example.com"], text)["ok"]
    assert arrived(lab, "alice@example.com", after)
    time.sleep(2)
    assert not imap_messages(lab, "gw2", "alice@example.com", f"discarded-{tag}")
    assert not imap_messages(lab, "gw2", "alice@example.com", f"held-{tag}")
    assert held_on_any_gateway(lab, lab_host, "alice@example.com") == held_before + 1


# Runs in a lab container: which of the (host, port) pairs it can open, all at once.
CONNECT = r"""
import concurrent.futures, json, socket, sys


def reach(pair):
    try:
        socket.create_connection(tuple(pair), timeout=3).close()
        return True
    except OSError:
        return False


with concurrent.futures.ThreadPoolExecutor(16) as pool:
    print(json.dumps(list(pool.map(reach, json.loads(sys.argv[1])))))
"""

# (target, port, a source that reaches it, one that must not)
PORT_CASES = [
    ("gw1", 12525, "lb1", "inet1"),    # pbs behind the LB: a PROXY header could fake any client
    ("gw1", 10587, "lb1", "inet1"),
    ("gw2", 11211, "mbox1", "inet1"),  # the POP-before-SMTP store has no authentication
    ("mbox1", 24, "gw3", "inet1"),     # LMTP only from the gateways
    ("gw1", 25, "spam1", "inet1"),     # std skips the spam check: only the spamcheck tier
    ("gw2", 25, "gw3", "lb1"),
    ("gw2", 10031, "mbox2", "spam1"),  # route relays the mailbox servers' own mail: only theirs
    ("mbox1", 143, "gw1", "inet1"),    # mailbox logins only through the gateways' relay
    ("mbox2", 110, "gw2", "inet1"),
    ("mbox1", 993, "gw3", "web1"),
    ("mbox2", 995, "gw1", "inet1"),
    ("mbox1", 4190, "gw2", "inet1"),
    ("gw1", 587, "gw2", "inet1"),      # subscribers submit and read through the LB only
    ("gw2", 465, "gw3", "web1"),
    ("gw3", 2525, "gw1", "inet1"),
    ("gw2", 143, "gw1", "inet1"),
    ("gw3", 995, "gw2", "web1"),
    ("gw1", 4190, "gw3", "inet1"),
]


@pytest.mark.parametrize("target, port, allowed, blocked", PORT_CASES)
def test_ports_only_their_clients_reach(reachable, target, port, allowed, blocked):
    assert reachable[allowed, target, port], f"{allowed} cannot reach {target}:{port}"
    assert not reachable[blocked, target, port], f"{blocked} reaches {target}:{port}"


@pytest.fixture(scope="module")
def reachable(lab, lab_host):
    """{(source, target, port): opened} for PORT_CASES: each source tries
    its pairs in parallel, the sources at once (a dropped port waits out the 3 s timeout)."""
    pairs = {}
    for target, port, allowed, blocked in PORT_CASES:
        for source in (allowed, blocked):
            pairs.setdefault(source, []).append((target, port))

    def tries(source):
        wanted = [[address(lab, target), port] for target, port in pairs[source]]
        out = lab_host(source).check_output(f"python3 -c {shlex.quote(CONNECT)} {shlex.quote(json.dumps(wanted))}")
        return {(source, target, port): opened for (target, port), opened in zip(pairs[source], json.loads(out))}

    with concurrent.futures.ThreadPoolExecutor(len(pairs)) as pool:
        return {key: opened for found in pool.map(tries, pairs) for key, opened in found.items()}


def test_outbound_mail_is_scanned_by_the_senders_contract(lab, lab_host):
    # carol has the virus contract, dave has none; both send EICAR to the outside.
    gateway = lab_host("gw2")
    held_before = held_for(lab_host, "gw2", "friend@example.net")
    ids, subjects = {}, {}
    for user in ("carol@example.org", "dave@example.org"):
        subjects[user], text = eicar_message(["friend@example.net"], user)
        ids[user] = email.message_from_string(text)["Message-ID"]
        with smtplib.SMTP_SSL(address(lab, "gw2"), 465, context=tls_context(lab), timeout=30) as smtp:
            smtp.login(user, PASSWORDS[user])
            assert smtp.sendmail(user, ["friend@example.net"], text.encode()) == {}

    def seen_by(instance, msgid):
        return msgid in gateway.check_output(f"journalctl --no-pager --since -2min -t postfix-{instance}/cleanup")

    assert wait_for(lambda: seen_by("std", ids["dave@example.org"]), 20), "dave's mail did not reach std"
    assert not seen_by("vscan", ids["dave@example.org"])
    assert wait_for(lambda: seen_by("vscan", ids["carol@example.org"]), 20)
    # cleanup logs the Message-ID before the queue file is moved to hold.
    assert wait_for(lambda: held_for(lab_host, "gw2", "friend@example.net") == held_before + 1, 20)
    assert not seen_by("std", ids["carol@example.org"])
    # carol hears about it with her domain's notice; the outside recipient never does.
    [notice] = arrived(lab, "carol@example.org", subjects["carol@example.org"], key="BODY")
    assert notice["Subject"] == "ウイルス検出のお知らせ"
    sent = gateway.check_output("journalctl --no-pager --since -2min -t ispmail-virus-notice")
    assert "notice sent to carol@example.org" in sent and "friend@example.net" not in sent


VERDICT = "X-Spam: Yes\r\nX-Spam-Score: 99\r\n"


def test_a_subscriber_cannot_forge_the_spam_verdict_by_submission(lab):
    # Without the submit instance's header_checks the forged verdict reaches the
    # mailbox servers' Sieve and files the message into dave's Junk.
    user, rcpt = "alice@example.com", "dave@example.org"
    subject, text = message(rcpt, sender=user, extra_headers=VERDICT)
    with smtplib.SMTP(address(lab, "lb1"), 587, timeout=30) as smtp:
        smtp.starttls(context=tls_context(lab))
        smtp.login(user, PASSWORDS[user])
        assert smtp.sendmail(user, [rcpt], text.encode()) == {}
    [msg] = arrived(lab, rcpt, subject, gateway="lb1")
    assert msg.get_all("X-Spam-Score") is None
    assert "Yes" not in (msg.get_all("X-Spam") or [])
    assert not imap_messages(lab, "lb1", rcpt, subject, folder="Junk")


def test_a_subscriber_cannot_forge_the_spam_verdict_by_pop_before_smtp(lab, lab_host):
    user, rcpt = "dave@example.org", "carol@example.org"
    subject, text = message(rcpt, sender=user, extra_headers=VERDICT)
    from_inet1(lab_host, POP3_FROM_OUTSIDE, host=address(lab, "lb1"), user=user, password=PASSWORDS[user])
    assert smtp_from_inet1(lab, lab_host, "lb1", 2525, [rcpt], text, user)["ok"]
    [msg] = arrived(lab, rcpt, subject, gateway="lb1")
    assert msg.get_all("X-Spam-Score") is None
    assert "Yes" not in (msg.get_all("X-Spam") or [])
    assert not imap_messages(lab, "lb1", rcpt, subject, folder="Junk")


MEMCACHED_GET = r"""
import json, socket, sys
a = json.loads(sys.argv[1])
with socket.create_connection(("127.0.0.1", a["port"]), timeout=5) as s:
    s.sendall(f"get pbs:{a['ip']}\r\n".encode())
    reply = b""
    while not reply.endswith(b"END\r\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
print(json.dumps({"stored": reply.startswith(b"VALUE")}))
"""


def pbs_stored(lab, lab_host, gateway, ip):
    """Whether a gateway's store authorizes ip for POP before SMTP."""
    args = json.dumps({"port": lab["platform_pop_before_smtp_port"], "ip": ip})
    out = lab_host(gateway).check_output(f"python3 -c {shlex.quote(MEMCACHED_GET)} {shlex.quote(args)}")
    return json.loads(out)["stored"]


def test_webmail_logins_never_authorise_the_webmail_host_for_pop_before_smtp(lab, lab_host):
    # Roundcube logs in for its users from web1 through the load balancer; recorded,
    # web1's address would be allowed to relay through pbs by anyone on it.
    user = "dave@example.org"
    login = ("import imaplib, ssl, sys\n"
             "imap = imaplib.IMAP4(sys.argv[1], 143, timeout=30)\n"
             "imap.starttls(ssl_context=ssl._create_unverified_context())\n"
             "imap.login(sys.argv[2], sys.argv[3])\nimap.logout()\n")
    lab_host("web1").check_output(
        f"python3 -c {shlex.quote(login)} {address(lab, 'lb1')} {user} {shlex.quote(PASSWORDS[user])}")
    inet1 = address(lab, "inet1")
    from_inet1(lab_host, POP3_FROM_OUTSIDE, host=address(lab, "lb1"), user=user, password=PASSWORDS[user])
    for gateway in lab["groups"]["gateway"]:
        # inet1's login a moment later was recorded: the recorder works, web1 is skipped.
        assert wait_for(lambda g=gateway: pbs_stored(lab, lab_host, g, inet1), 10), gateway
        assert not pbs_stored(lab, lab_host, gateway, address(lab, "web1")), gateway
