"""The sending limit per subscriber (ispmail-send-limit on every gateway): a compromised
account cannot send without end by using the null sender, rotating senders, or the many
gateways behind the load balancer. Over the limit the client gets 451; the limit itself
(postfix_gateway_send_limit) is small in the lab."""

import hashlib
import json
import shlex
import smtplib
import uuid

import pytest

from mailclient import PASSWORDS, address, deployed_setting, tls_context
from outside import POP3_FROM_OUTSIDE, from_inet1

# Runs in inet1: one message per connection through lb1:2525, each with its own sender.
PBS_BURST = r"""
import json, smtplib, sys
a = json.loads(sys.argv[1])
codes = []
for n, sender in enumerate(a["senders"]):
    try:
        with smtplib.SMTP(a["host"], 2525, timeout=60) as s:
            s.sendmail(sender, [a["rcpt"]], ("Subject: %s %d\r\n\r\nx\r\n" % (a["tag"], n)).encode())
        codes.append(250)
    except smtplib.SMTPResponseException as e:
        codes.append(e.smtp_code)
    except smtplib.SMTPRecipientsRefused as e:
        codes.append(list(e.recipients.values())[0][0])
print(json.dumps(codes))
"""

MEMCACHED_GET = r"""
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5) as s:
    s.sendall(("get %s\r\n" % sys.argv[1]).encode())
    reply = b""
    while not reply.endswith(b"END\r\n"):
        reply += s.recv(4096)
lines = reply.decode().split("\r\n")
print(lines[1] if lines[0].startswith("VALUE") else 0)
"""


@pytest.fixture(scope="module")
def limit(lab, lab_host):
    return int(deployed_setting(lab_host, lab["groups"]["gateway"][0], "/etc/postfix/ispmail-send-limit.conf",
                                "limit"))


def used(lab, lab_host, who):
    """Recipients already counted for a subscriber, as every gateway's store has it."""
    key = "sent:" + hashlib.sha256(who.encode()).hexdigest()[:24]
    port = lab["platform_pop_before_smtp_port"]
    counts = {int(lab_host(gateway).check_output(f"python3 -c {shlex.quote(MEMCACHED_GET)} {key} {port}"))
              for gateway in lab["groups"]["gateway"]}
    assert len(counts) == 1, counts  # one count, the same on every gateway
    return counts.pop()


def submit(lab, user, sender, rcpt, tag):
    """One authenticated submission through lb1:587 (its own connection); the SMTP code."""
    try:
        with smtplib.SMTP(address(lab, "lb1"), 587, timeout=60) as smtp:
            smtp.starttls(context=tls_context(lab))
            smtp.login(user, PASSWORDS[user])
            smtp.sendmail(sender, [rcpt], f"From: {user}\r\nSubject: {tag}\r\n\r\nx\r\n".encode())
        return 250
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code


def test_null_sender_mail_counts_against_the_login_on_every_gateway(lab, lab_host, limit):
    user, rcpt, tag = "erin@example.com", "dave@example.org", f"limit-{uuid.uuid4().hex[:8]}"
    room = limit - used(lab, lab_host, f"login {user}")
    # Every other message with the null sender: once uncounted, now counted like the rest.
    codes = [submit(lab, user, "" if n % 2 else user, rcpt, tag) for n in range(room + 2)]
    assert codes == [250] * room + [451, 451], codes
    assert used(lab, lab_host, f"login {user}") == limit
    # The limit is per login: another subscriber still sends.
    assert submit(lab, "alice@example.com", "alice@example.com", rcpt, tag) == 250


def test_pop_before_smtp_clients_are_limited_whatever_sender_they_use(lab, lab_host, limit):
    user, rcpt, tag = "dave@example.org", "carol@example.org", f"limit-{uuid.uuid4().hex[:8]}"
    from_inet1(lab_host, POP3_FROM_OUTSIDE, host=address(lab, "lb1"), user=user, password=PASSWORDS[user])
    who = f"address {address(lab, 'inet1')}"
    room = limit - used(lab, lab_host, who)
    hosted = ["dave@example.org", "carol@example.org", "alice@example.com", "bob@example.com"]
    senders = [hosted[n % len(hosted)] for n in range(room + 2)]
    codes = json.loads(lab_host("inet1").check_output(
        f"python3 -c {shlex.quote(PBS_BURST)} "
        + shlex.quote(json.dumps({"host": address(lab, "lb1"), "senders": senders, "rcpt": rcpt, "tag": tag}))))
    assert codes == [250] * room + [451, 451], codes


def test_pop_before_smtp_takes_only_senders_in_hosted_domains(lab, lab_host):
    user = "dave@example.org"
    from_inet1(lab_host, POP3_FROM_OUTSIDE, host=address(lab, "lb1"), user=user, password=PASSWORDS[user])
    codes = json.loads(lab_host("inet1").check_output(
        f"python3 -c {shlex.quote(PBS_BURST)} "
        + shlex.quote(json.dumps({"host": address(lab, "lb1"), "senders": ["", "someone@example.net"],
                                  "rcpt": "carol@example.org", "tag": "foreign"}))))
    assert codes == [554, 554], codes
