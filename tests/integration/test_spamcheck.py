"""The spam check tier through the real path: inbound mail from inet1 (or a forged sender)
through lb1:25 to spam1 and the gateways, read back over IMAP; outbound mail from
subscribers through the gateways and spam1 to inet1's MTA."""

import json
import re
import shlex
import smtplib
import uuid

import pytest

from mailclient import PASSWORDS, address, imap_messages, message, tls_context, wait_for
from outside import smtp_from_inet1
from test_loadbalancer import serving

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
CONTRACT = {"alice@example.com": "[SPAM]", "carol@example.org": "【迷惑メール】"}  # own contract / domain default
NO_CONTRACT = ["bob@example.com", "dave@example.org"]  # domain without / own "no"
OUTSIDE_MAILDIR = "/var/mail/outside"


def found(lab, user, subject, folder="INBOX", timeout=40, key="SUBJECT"):
    return wait_for(lambda: imap_messages(lab, "gw2", user, subject, folder=folder, key=key), timeout) or []


def spam_headers(msg):
    return sorted(name for name in msg.keys() if name.lower().startswith(("x-spam", "x-rspamd")))


def inbound(lab, lab_host, rcpts, body="hello\r\n", sender="friend@example.net", extra_headers=""):
    """One message from inet1 (inside example.net's SPF record) through lb1:25; its subject."""
    subject, text = message(", ".join(rcpts), sender=sender, body=body, extra_headers=extra_headers)
    sent = smtp_from_inet1(lab, lab_host, "lb1", 25, rcpts, text, sender)
    assert sent["ok"], sent
    return subject


def at_inet1(lab_host, rcpt, marker):
    """Files in inet1's Maildir delivered to rcpt that contain marker."""
    out = lab_host("inet1").run(f"grep -l {shlex.quote(marker)} -r {OUTSIDE_MAILDIR}/new")
    files = out.stdout.split()
    return [path for path in files if f"Delivered-To: {rcpt}" in lab_host("inet1").file(path).content_string]


def test_spamcheck_services_run_and_the_lb_sends_port_25_to_them(lab, lab_host):
    spam = lab_host("spam1")
    for unit in ["postfix@postfix-edge", "postfix@postfix-scan", "rspamd", "redis-server", "unbound",
                 "ispmail-spam-milter"]:
        assert spam.service(unit).is_running, unit
    for instance in ["edge", "scan"]:
        spam.run_test(f"postfix -c /etc/postfix-{instance} check")
    spam.run_test("rspamadm configtest")
    assert serving(lab, "smtp") == ["spam1"]


def test_lab_dns_answers_the_outside_zones(lab, lab_host):
    spam = lab_host("spam1")
    script = "import socket; print(socket.gethostbyname('inet1.example.net'))"
    assert spam.check_output(f"python3 -c {shlex.quote(script)}") == address(lab, "inet1")
    spf = spam.check_output("rspamadm dns_tool spf -d example.net")
    assert f"ip4:{address(lab, 'inet1')}" in spf and "Policy: pass" in spf


@pytest.mark.parametrize("user", sorted(CONTRACT))
def test_gtube_for_a_spam_contract_is_tagged_and_filed_in_junk(lab, lab_host, user):
    subject = inbound(lab, lab_host, [user], body=GTUBE + "\r\n")
    [msg] = found(lab, user, subject, folder="Junk")
    assert msg["X-Spam"] == "Yes"
    assert "GTUBE" in msg["X-Spamd-Result"]
    assert str(msg["Subject"]) == f"{CONTRACT[user]} {subject}"
    assert not imap_messages(lab, "gw2", user, subject)  # not in INBOX


def test_gtube_without_the_contract_arrives_untouched(lab, lab_host):
    user = "dave@example.org"
    subject = inbound(lab, lab_host, [user], body=GTUBE + "\r\n")
    [msg] = found(lab, user, subject)
    assert str(msg["Subject"]) == subject
    assert spam_headers(msg) == []
    assert GTUBE in msg.get_content()


def test_one_message_to_both_kinds_of_recipient_is_handled_per_recipient(lab, lab_host):
    # bob forwards to carol and keeps a copy: that copy was routed after the spam check,
    # so carol's INBOX may hold it; her own copy must be in Junk.
    subject = inbound(lab, lab_host, sorted(CONTRACT) + NO_CONTRACT, body=GTUBE + "\r\n")
    for user, tag in CONTRACT.items():
        [msg] = found(lab, user, subject, folder="Junk")
        assert msg["X-Spam"] == "Yes" and str(msg["Subject"]) == f"{tag} {subject}", user
    for user in NO_CONTRACT:
        [msg] = found(lab, user, subject)
        assert str(msg["Subject"]) == subject and spam_headers(msg) == [], user
    # One scan per contracted recipient, none for the others.
    log = lab_host("spam1").check_output("journalctl --no-pager --since -3min -t ispmail-spam-milter")
    scanned = [line for line in log.splitlines() if "spam=True" in line and any(u in line for u in CONTRACT)]
    assert len(scanned) >= 2 and not any(u in log for u in NO_CONTRACT)


def receiving_gateway(msg, lab):
    """The gateway whose std instance took the message from the spam check tier: the host of
    the Received header whose client address is a spamcheck host's."""
    spam = {address(lab, host) for host in lab["groups"]["spamcheck"]}
    for received in msg.get_all("Received", []):
        client = re.search(r"\[(\d+\.\d+\.\d+\.\d+)\]\)", str(received))
        by = re.search(r"\bby ([a-z0-9-]+)\.", str(received))
        if client and by and client.group(1) in spam and by.group(1) in lab["groups"]["gateway"]:
            return by.group(1)
    return None


def test_inbound_mail_spreads_over_every_gateway(lab, lab_host):
    # Each message picks a gateway at random (the gateway pool's name has all their
    # addresses): twelve messages all on one of three gateways has odds of 3 in 3^12. Half go
    # straight to the gateways (relay), half through rspamd's scan instance (its relayhost).
    users = ["bob@example.com"] * 6 + ["alice@example.com"] * 6
    subjects = [(user, inbound(lab, lab_host, [user])) for user in users]
    gateways = []
    for user, subject in subjects:
        [msg] = found(lab, user, subject)
        gateways.append(receiving_gateway(msg, lab))
    assert None not in gateways, gateways
    assert len(set(gateways)) >= 2, f"every message went to {gateways[0]}"


def test_clean_mail_for_a_contract_is_scored_and_stays_in_the_inbox(lab, lab_host):
    user = "alice@example.com"
    subject = inbound(lab, lab_host, [user], body="Minutes of the meeting are attached below.\r\n")
    [msg] = found(lab, user, subject)
    assert msg["X-Spam"] == "No" and str(msg["Subject"]) == subject
    # inet1 is in example.net's SPF record: the scan judged inet1, not the edge.
    assert "R_SPF_ALLOW" in msg["X-Spamd-Result"], msg["X-Spamd-Result"]


def test_a_forged_sender_outside_its_spf_record_is_scored(lab, lab_host):
    # The test runner is not in example.net's SPF record ("-all") and DMARC says reject.
    user = "alice@example.com"
    subject, text = message(user, sender="billing@example.net", body="Please confirm your account.\r\n")
    with smtplib.SMTP(address(lab, "lb1"), 25, timeout=60) as smtp:
        smtp.ehlo("forger.invalid")
        assert smtp.sendmail("billing@example.net", [user], text.encode()) == {}
    # In INBOX or Junk, whichever it lands in: both looked at on each poll.
    [msg] = wait_for(lambda: imap_messages(lab, "gw2", user, subject)
                     or imap_messages(lab, "gw2", user, subject, folder="Junk"), 40) or []
    result = msg["X-Spamd-Result"]
    assert "R_SPF_FAIL" in result and "DMARC_POLICY_REJECT" in result, result
    assert float(msg["X-Spam-Score"]) >= 3.0


def test_a_spam_verdict_from_outside_is_not_believed(lab, lab_host):
    user = "bob@example.com"
    subject = inbound(lab, lab_host, [user], extra_headers="X-Spam: Yes\r\nX-Spam-Score: 99\r\n")
    [msg] = found(lab, user, subject)
    assert spam_headers(msg) == []


def test_the_edge_takes_only_hosted_users(lab, lab_host):
    _, text = message("nobody@example.com")
    refused = smtp_from_inet1(lab, lab_host, "lb1", 25, ["nobody@example.com"], text, "friend@example.net")
    assert refused["error"]["nobody@example.com"][0] == 550, refused
    relay = smtp_from_inet1(lab, lab_host, "lb1", 25, ["someone@example.net"], text, "friend@example.net")
    assert relay["error"]["someone@example.net"][0] == 554, relay


def test_hosted_recipients_are_accepted_and_delivered_while_the_resolver_is_down(lab, lab_host):
    """Inbound mail for our own domains needs no DNS: the edge gave 450 for every recipient
    while unbound was down (reject_unknown_recipient_domain), and then its relay to the
    gateways waited for their names from DNS (both found by `make resilience`)."""
    user = "bob@example.com"
    subject, text = message(user)
    spamcheck = lab["groups"]["spamcheck"]
    try:
        for host in spamcheck:
            lab_host(host).run_test("systemctl stop unbound")
        sent = smtp_from_inet1(lab, lab_host, "lb1", 25, [user], text, "friend@example.net")
        assert sent["ok"], sent
        # No queue flush: delivered by the first try, through the gateway pool in /etc/hosts.
        assert found(lab, user, subject, timeout=60)
    finally:
        for host in spamcheck:
            lab_host(host).run_test("systemctl start unbound")


def test_the_block_list_and_reputation_checks_run(lab, lab_host):
    # 192.0.2.99 is listed in the lab's DNS block list (resolved by spam1's unbound).
    script = r"""
import json, urllib.request
req = urllib.request.Request("http://127.0.0.1:11333/checkv2", method="POST",
    data=b"From: a@example.net\r\nTo: alice@example.com\r\nSubject: hi\r\n\r\nhello\r\n",
    headers={"IP": "192.0.2.99", "From": "a@example.net", "Rcpt": "alice@example.com",
             "Helo": "mail.example.net", "Settings-Id": "ispmail_inbound"})
print(json.dumps(json.load(urllib.request.urlopen(req, timeout=30))["symbols"]))
"""
    symbols = json.loads(lab_host("spam1").check_output(f"python3 -c {shlex.quote(script)}"))
    assert symbols["ISPMAIL_LAB_RBL"]["score"] == 4.0
    # The reputation rule keeps per-address counters in Redis.
    keys = lab_host("spam1").check_output("redis-cli --scan --pattern 'RR:*' | head -5")
    assert keys.strip(), "no reputation keys in Redis"


def test_outbound_mail_reaches_the_internet_through_spamcheck(lab, lab_host):
    user = "alice@example.com"
    marker = f"outbound-{uuid.uuid4().hex}"
    _, text = message("friend@example.net", subject=marker, sender=user)
    with smtplib.SMTP_SSL(address(lab, "gw2"), 465, context=tls_context(lab), timeout=30) as smtp:
        smtp.login(user, PASSWORDS[user])
        assert smtp.sendmail(user, ["friend@example.net"], text.encode()) == {}
    [path] = wait_for(lambda: at_inet1(lab_host, "friend@example.net", marker), 40)
    received = lab_host("inet1").file(path).content_string
    assert "by spam1" in received and "(Postfix-std)" in received


def test_outbound_spam_from_a_subscriber_never_reaches_the_internet(lab, lab_host):
    user = "alice@example.com"
    marker = f"outbound-gtube-{uuid.uuid4().hex}"
    _, text = message("friend@example.net", subject=marker, sender=user, body=GTUBE + "\r\n")
    with smtplib.SMTP_SSL(address(lab, "gw2"), 465, context=tls_context(lab), timeout=30) as smtp:
        smtp.login(user, PASSWORDS[user])
        assert smtp.sendmail(user, ["friend@example.net"], text.encode()) == {}
    # spam1 refused it (554) and the gateway returned it to alice.
    bounce = found(lab, user, marker, key="TEXT")
    assert bounce and "Undelivered" in str(bounce[0]["Subject"]), "no bounce for the refused message"
    assert "554" in bounce[0].as_string()
    assert not at_inet1(lab_host, "friend@example.net", marker)


@pytest.mark.parametrize("port", [25, 10025])
def test_spamcheck_ports_refuse_the_outside_directly(lab, lab_host, port):
    script = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)\n"
              "    print('open')\nexcept OSError:\n    print('closed')\n")
    out = lab_host("inet1").check_output(f"python3 -c {shlex.quote(script)} {address(lab, 'spam1')} {port}")
    assert out.strip() == "closed"
