"""ispmail-postfix-metrics (role metrics_agent): queue directories, postqueue -j, journal
lines of real Postfix instances, and the exposition parsed back as Prometheus reads it."""

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from scripts import load

metrics = load("metrics_agent/files/ispmail-postfix-metrics")

ADDRESSES = {"10.213.0.41": "mbox1", "10.213.0.42": "mbox2", "10.213.0.20": "spam1", "10.213.0.31": "gw1"}
LOG_NAMES = {"postfix": "postfix", "postfix-route": "route", "postfix-mbox": "mbox", "postfix-submit": "submit",
             "postfix-edge": "edge"}


def record(kind, data):
    """One Postfix queue file record: type, length in 7-bit groups (low first), data."""
    length, encoded = len(data), bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            break
    return kind.encode() + bytes(encoded) + data


def queue_file(path, arrival, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    size = b"%15d %15d %15d %15d %15d %15d" % (412, 180, 1, 0, 412, 0)
    path.write_bytes(record("C", size) + record("T", b"%d %d" % (arrival, 123456)) + record("F", b"")
                     + record("S", b"alice@example.com") + b"X" * 200)
    os.utime(path, (mtime, mtime))


# ---- instances ----------------------------------------------------------------------------

POSTMULTI_GATEWAY = """\
-               -               y         /etc/postfix
postfix-submit  gateway         y         /etc/postfix-submit
postfix-pbs     gateway         y         /etc/postfix-pbs
postfix-route   gateway         y         /etc/postfix-route
postfix-vscan   gateway         y         /etc/postfix-vscan
postfix-mbox    gateway         y         /etc/postfix-mbox
postfix-std     gateway         y         /etc/postfix-std
"""


def test_postmulti_names_the_instances_by_their_config_directory():
    instances = metrics.parse_postmulti(POSTMULTI_GATEWAY + "garbage\n\n  \npostfix-x g y relative/dir\n")
    assert [name for name, _ in instances] == ["postfix", "submit", "pbs", "route", "vscan", "mbox", "std"]
    assert instances[3] == ("route", "/etc/postfix-route")
    assert metrics.parse_postmulti("-  -  y  /etc/postfix\n") == [("postfix", "/etc/postfix")]


def test_instances_from_the_default_main_cf(tmp_path, monkeypatch):
    (tmp_path / "main.cf").write_text(
        "multi_instance_wrapper = ${command_directory}/postmulti -p --\nmulti_instance_enable = yes\n"
        "multi_instance_directories = /etc/postfix-submit /etc/postfix-pbs,\n    /etc/postfix-route\n")
    assert metrics.discover(str(tmp_path)) == [("postfix", str(tmp_path)), ("submit", "/etc/postfix-submit"),
                                               ("pbs", "/etc/postfix-pbs"), ("route", "/etc/postfix-route")]
    # A null client (mailbox servers): the default instance only.
    (tmp_path / "main.cf").write_text("relayhost = [127.0.0.1]:25\n")
    assert metrics.discover(str(tmp_path)) == [("postfix", str(tmp_path))]
    # $variables or no main.cf: postmulti answers.
    monkeypatch.setattr(metrics, "run", lambda command, check=True: POSTMULTI_GATEWAY)
    (tmp_path / "main.cf").write_text("multi_instance_directories = $config_directory-a\n")
    assert len(metrics.discover(str(tmp_path))) == 7
    assert len(metrics.discover(str(tmp_path / "missing"))) == 7


def test_main_cf_gives_queue_directory_and_log_name(tmp_path):
    (tmp_path / "main.cf").write_text(
        "# queue_directory = /nowhere\nqueue_directory = /var/spool/postfix-route\n"
        "syslog_name = postfix-route\nsmtpd_milters =\n  inet:127.0.0.1:1,\n  inet:127.0.0.1:2\n"
        "multi_instance_name = postfix-route\n")
    queue_dir, names = metrics.instance_settings("route", str(tmp_path))
    assert queue_dir == "/var/spool/postfix-route"
    assert names == {"postfix-route"}
    # The default instance without queue_directory: Postfix's compiled-in default.
    assert metrics.instance_settings("postfix", str(tmp_path / "missing")) == ("/var/spool/postfix", {"postfix"})


# ---- queues -------------------------------------------------------------------------------

def test_queue_counts_and_oldest_arrival_in_hashed_subdirectories(tmp_path):
    now = 1_800_000_000
    deferred = tmp_path / "deferred"
    # Deferred files carry the next retry as mtime: the age comes from the T record.
    queue_file(deferred / "A" / "A1B2C3D4E5", arrival=now - 7200, mtime=now + 300)
    queue_file(deferred / "F" / "F00BA12345", arrival=now - 60, mtime=now - 30)
    queue_file(deferred / "F" / "FEEDBEEF00", arrival=now - 600, mtime=now + 3000)
    assert metrics.scan_queue(str(deferred), now) == (3, 7200.0)
    # A file being written (no T record yet) counts with its mtime.
    partial = tmp_path / "incoming" / "4" / "4ABC"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"C\x05abc")
    os.utime(partial, (now - 5, now - 5))
    assert metrics.scan_queue(str(tmp_path / "incoming"), now) == (1, 5.0)
    assert metrics.scan_queue(str(tmp_path / "hold"), now) == (0, 0.0)


def test_arrival_time_of_malformed_files(tmp_path):
    for number, data in enumerate([b"", b"T", b"T\x85", b"T\x03abc", b"\xff" * 600, record("T", b"")]):
        path = tmp_path / f"f{number}"
        path.write_bytes(data)
        assert metrics.arrival_time(str(path)) is None
    assert metrics.arrival_time(str(tmp_path / "gone")) is None
    long_record = record("C", b"x" * 200) + record("T", b"1700000000 1")
    (tmp_path / "long").write_bytes(long_record)
    assert metrics.arrival_time(str(tmp_path / "long")) == 1700000000.0


# ---- deferred recipients --------------------------------------------------------------------

def postqueue_line(queue, recipients):
    return json.dumps({"queue_name": queue, "queue_id": "4Q9Xz12abc", "arrival_time": 1800000000,
                       "message_size": 812, "forced_expire": False, "sender": "alice@example.com",
                       "recipients": recipients})


def test_deferred_recipients_by_next_hop():
    lines = [
        postqueue_line("deferred", [
            {"address": "bob@example.com", "delay_reason":
                "connect to mbox1.lab.ispmail.test[10.213.0.41]:24: Connection refused"},
            {"address": "carol@example.com", "delay_reason": "delivery temporarily suspended: "
                                                             "connect to mbox1.lab.ispmail.test[10.213.0.41]:24: "
                                                             "Connection refused"},
        ]),
        postqueue_line("deferred", [
            {"address": "dave@example.org", "delay_reason": "host mx.example.org[192.0.2.25] said: 451 4.7.1 "
                                                            "Greylisted (in reply to RCPT TO command)"},
            {"address": "erin@example.net", "delay_reason": "Host or domain name not found. Name service error "
                                                            "for name=example.net type=MX: Host not found, try again"},
            {"address": "frank@example.com", "delay_reason": "conversation with mbox2.lab.ispmail.test"
                                                             "[10.213.0.42] timed out while receiving the initial "
                                                             "server greeting"},
            {"address": "grace@example.com", "delay_reason": "Host or domain name not found. Name service error "
                                                             "for name=mbox2.lab.ispmail.test type=A: Host not found"},
            {"address": "nobody", "delay_reason": "unknown mail transport error"},
        ]),
        # Active messages, other queues, broken lines: not counted, no crash.
        postqueue_line("active", [{"address": "x@example.com"}]),
        postqueue_line("deferred", "not a list"),
        postqueue_line("deferred", ["not a dict", {"delay_reason": None}]),
        "{broken json", "[]", "", "null",
    ]
    assert metrics.deferred_recipients(lines, ADDRESSES) == {
        "mbox1": 2, "mbox2": 2, "example.org": 1, "example.net": 1, "other": 2}


def test_outside_next_hops_are_capped():
    lines = [postqueue_line("deferred", [{"address": f"u@d{n}.example", "delay_reason": "x"}] * (n + 1))
             for n in range(5)]
    counts = metrics.deferred_recipients(lines, ADDRESSES, limit=2)
    assert counts == {"d4.example": 5, "d3.example": 4, "other": 6}


@given(st.text(max_size=200), st.text(max_size=40))
def test_nexthop_never_raises_and_is_a_label_value(reason, recipient):
    hop = metrics.nexthop(reason, recipient, ADDRESSES)
    assert hop and all(c.isalnum() or c in ".-" for c in hop), hop


# ---- log ----------------------------------------------------------------------------------

REJECTS = [
    ("NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 554 5.7.1 <x@example.net>: Relay access denied; "
     "from=<a@example.org> to=<x@example.net> proto=ESMTP helo=<client.example.org>", ("5xx", "relay")),
    ("NOQUEUE: reject: RCPT from inet1.example.net[10.213.0.80]: 550 5.1.1 <nobody@example.com>: Recipient "
     "address rejected: User unknown in virtual mailbox table; from=<a@example.net> to=<nobody@example.com> "
     "proto=ESMTP helo=<inet1.example.net>", ("5xx", "unknown_user")),
    ("NOQUEUE: reject: RCPT from inet1.example.net[10.213.0.80]: 450 4.1.2 <a@nowhere.invalid>: Recipient "
     "address rejected: Domain not found; from=<b@example.net> to=<a@nowhere.invalid> proto=ESMTP helo=<x>",
     ("4xx", "unknown_domain")),
    ("4Q9Xz12abc: reject: RCPT from gw1.lab.ispmail.test[10.213.0.31]: 451 4.7.1 Sending limit reached, try "
     "later; from=<alice@example.com> to=<bob@example.org> proto=ESMTP helo=<gw1>", ("4xx", "rate_limit")),
    ("NOQUEUE: reject: RCPT from unknown[10.213.0.80]: 553 5.7.1 <bob@example.com>: Sender address rejected: "
     "not owned by user alice@example.com; from=<bob@example.com> to=<c@example.org> proto=ESMTP helo=<x>",
     ("5xx", "sender_login")),
    ("NOQUEUE: reject: RCPT from [192.0.2.9]:41234: 550 5.7.1 Service unavailable; client [192.0.2.9] "
     "blocked using zen.spamhaus.org; from=<s@spam.example> to=<a@example.com> proto=ESMTP helo=<spam>",
     ("5xx", "dnsbl")),
    ("4Q9Xz12abc: milter-reject: END-OF-MESSAGE from spam1.lab.ispmail.test[10.213.0.20]: 5.7.1 Spam message "
     "rejected; from=<s@spam.example> to=<a@example.com> proto=ESMTP helo=<spam1.lab.ispmail.test>",
     ("5xx", "spam")),
    ("NOQUEUE: milter-reject: RCPT from localhost[127.0.0.1]: 451 4.7.1 Spam check unavailable, try again later; "
     "from=<s@example.net> to=<a@example.com> proto=ESMTP helo=<x>", ("4xx", "temporary")),
    ("4Q9Xz12abc: reject: header Subject: Buy virus-free pills from unknown[192.0.2.7]; from=<s@example.net> "
     "to=<a@example.com> proto=ESMTP helo=<x>: 5.7.1 message content rejected", ("5xx", "content")),
    ("NOQUEUE: reject: MAIL from unknown[192.0.2.7]: 552 5.3.4 Message size exceeds fixed limit; proto=ESMTP "
     "helo=<x>", ("5xx", "size")),
    ("NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 504 5.5.2 <bob>: Recipient address rejected: need "
     "fully-qualified address; from=<a@example.net> to=<bob> proto=ESMTP helo=<x>", ("5xx", "not_fqdn")),
    ("NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 554 5.7.1 <a@example.com>: Recipient address rejected: "
     "Access denied; from=<spam@example.net> to=<a@example.com> proto=ESMTP helo=<x>", ("5xx", "access")),
    ("NOQUEUE: reject: CONNECT from unknown[192.0.2.7]: 554 5.7.1 weird text; proto=SMTP", ("5xx", "other")),
]


@pytest.mark.parametrize(("line", "expected"), REJECTS)
def test_reject_code_and_reason(line, expected):
    assert metrics.parse_reject(line) == expected


STATUS_LINES = [
    ("4Q9Xz12abc: to=<bob@example.com>, relay=mbox1.lab.ispmail.test[10.213.0.41]:24, delay=0.31, "
     "delays=0.05/0.01/0.1/0.15, dsn=2.0.0, status=sent (250 2.0.0 <bob@example.com> Saved)", ("sent", 0.31)),
    ("4Q9Xz12abc: to=<bob@example.com>, orig_to=<b@example.com>, relay=127.0.0.1[127.0.0.1]:10025, "
     "conn_use=2, delay=12, delays=11/0/0.5/0.5, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4QAAA)",
     ("sent", 12.0)),
    ("4Q9Xz12abc: to=<bob@example.com>, relay=none, delay=3601, delays=3600/1/0/0, dsn=4.4.1, status=deferred "
     "(connect to mbox1.lab.ispmail.test[10.213.0.41]:24: Connection refused)", ("deferred", 3601.0)),
    ("4Q9Xz12abc: to=<x@example.org>, relay=mx.example.org[192.0.2.25]:25, delay=1.2, delays=0.1/0/0.5/0.6, "
     "dsn=5.1.1, status=bounced (host mx.example.org[192.0.2.25] said: 550 5.1.1 No such user)",
     ("bounced", 1.2)),
    ("4Q9Xz12abc: from=<alice@example.com>, status=expired, returned to sender", ("expired", None)),
]


@pytest.mark.parametrize(("line", "expected"), STATUS_LINES)
def test_status_lines(line, expected):
    assert metrics.parse_status(line) == expected


@pytest.mark.parametrize("line", [
    "4Q9Xz12abc: to=<a@example.com>, relay=x, delay=0.1, delays=0/0/0/0, dsn=2.1.5, status=deliverable (ok)",
    "4Q9Xz12abc: from=<alice@example.com>, size=812, nrcpt=1 (queue active)",
    "4Q9Xz12abc: removed", "connect from unknown[192.0.2.7]", "", "status=sent", ": to=<, status=sent",
    "4Q9Xz12abc: to=<a@b>, delay=1.2.3.4, status=sent", "warning: reject: weird",
    "NOQUEUE: reject:", "NOQUEUE: reject: RCPT", "NOQUEUE: reject: RCPT from",
])
def test_other_and_malformed_lines_are_not_counted(line):
    counters = metrics.empty_counters()
    metrics.count_entry(counters, "route", line)
    counted = sum(sum(values.values()) for values in counters["messages"].values())
    assert counted == 0 or "delay=1.2.3.4" in line  # a sent line with a broken delay counts, without delay
    assert not counters["delay"]


@given(st.text(max_size=300))
def test_reject_parser_never_raises_and_speaks_the_vocabulary(text):
    for line in (text, "NOQUEUE: reject: RCPT from x[1.2.3.4]: " + text, "ABC: reject: header " + text):
        result = metrics.parse_reject(line)
        assert result is None or (result[0] in ("4xx", "5xx") and result[1] in metrics.REASON_VOCABULARY)
    assert metrics.reject_reason(text) in metrics.REASON_VOCABULARY


@given(st.text(max_size=300))
def test_status_parser_never_raises(text):
    for line in (text, "ABC123: to=<a@b>, " + text, "ABC123: to=<a@b>, delay=" + text + " status=sent"):
        result = metrics.parse_status(line)
        assert result is None or result[0] in metrics.STATUSES


# Copied from the lab's journals (spam1 and gw1): SYSLOG_IDENTIFIER, MESSAGE.
LAB_ENTRIES = [
    ("postfix-edge/relay/smtp", "EC4E2254658: to=<erin@example.com>, relay=gw1.lab.ispmail.test[10.213.0.31]:25, "
     "delay=6.5, delays=0.96/1.9/1.7/1.9, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as DDBE32521DF)"),
    ("postfix-edge/smtpd", "NOQUEUE: reject: RCPT from inet1.lab.ispmail.test[10.213.0.80]: 550 5.1.1 "
     "<nobody-h1a@example.com>: Recipient address rejected: User unknown in relay recipient table; "
     "from=<someone@example.net> to=<nobody-h1a@example.com> proto=ESMTP helo=<inet1.example.net>"),
    ("postfix-edge/smtpd", "NOQUEUE: reject: RCPT from inet1.lab.ispmail.test[10.213.0.80]: 554 5.7.1 "
     "<someone@elsewhere.test>: Relay access denied; from=<someone@example.net> to=<someone@elsewhere.test> "
     "proto=ESMTP helo=<inet1.example.net>"),
    ("postfix-edge/smtpd", "connect from inet1.lab.ispmail.test[10.213.0.80]"),
    ("postfix-std/smtp", "DDBE32521DF: to=<erin@example.com>, relay=127.0.0.1[127.0.0.1]:10026, delay=1.7, "
     "delays=1.1/0.26/0.03/0.39, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as DA2D32521EC)"),
    ("postfix-route/smtp", "DA2D32521EC: to=<alice@example.com>, orig_to=<erin@example.com>, "
     "relay=127.0.0.1[127.0.0.1]:10027, delay=9.2, delays=0.12/0.25/1.7/7.1, dsn=2.0.0, status=sent "
     "(250 2.0.0 Ok: queued as 036C925221B)"),
    ("postfix-mbox/lmtp", "97B6125221E: to=<alice@example.com>, relay=mbox2[10.213.0.42]:24, delay=1.4, "
     "delays=0.03/0.03/0.47/0.83, dsn=2.0.0, status=sent (250 2.0.0 <alice@example.com> "
     "uKAMJwRQFWs4KQAAVfinWA Saved)"),
    ("postfix-submit/smtpd", "disconnect from lb1.lab.ispmail.test[10.213.0.10] ehlo=1 quit=1 commands=2"),
]


def test_lab_journal_lines():
    counters = metrics.empty_counters()
    metrics.count_journal(journal_lines(LAB_ENTRIES), counters, LOG_NAMES | {"postfix-std": "std"})
    assert counters["messages"] == {"edge": {"sent": 1}, "std": {"sent": 1}, "route": {"sent": 1},
                                    "mbox": {"sent": 1}}
    assert counters["rejects"] == {"edge": {"5xx|unknown_user": 1, "5xx|relay": 1}}
    assert counters["delay"]["route"]["sum"] == 9.2


def journal_lines(entries):
    cursor = 0
    for identifier, message in entries:
        cursor += 1
        yield json.dumps({"__CURSOR": f"s=abc;i={cursor:x}", "__REALTIME_TIMESTAMP": "1800000000000000",
                          "SYSLOG_IDENTIFIER": identifier, "MESSAGE": message})


def test_journal_counts_per_instance_and_keeps_the_last_cursor():
    counters = metrics.empty_counters()
    entries = [
        ("postfix-mbox/lmtp", STATUS_LINES[0][0]),
        ("postfix-route/smtp", STATUS_LINES[1][0]),
        ("postfix-route/smtp", STATUS_LINES[2][0]),
        ("postfix-route/qmgr", STATUS_LINES[4][0]),
        ("postfix-submit/smtpd", REJECTS[4][0]),
        ("postfix-submit/smtpd", REJECTS[4][0]),
        ("postfix-edge/outbound", STATUS_LINES[3][0]),
        ("postfix/smtp", STATUS_LINES[0][0]),
        ("dovecot", STATUS_LINES[0][0]),          # not Postfix
        ("postfix-unknown/smtp", STATUS_LINES[0][0]),  # no such instance here
        (None, "x"),
    ]
    lines = list(journal_lines(entries))
    # Not UTF-8: journald gives the message as a byte array.
    lines.insert(2, json.dumps({"__CURSOR": "s=abc;i=ff", "SYSLOG_IDENTIFIER": "postfix-route/smtp",
                                "MESSAGE": list(STATUS_LINES[0][0].encode()[:40]) + [0xff, 0xfe]}))
    lines += ["", "not json", "[1, 2]", json.dumps({"SYSLOG_IDENTIFIER": "postfix-route/smtp", "MESSAGE": 5})]
    cursor = metrics.count_journal(lines, counters, LOG_NAMES)
    assert cursor == f"s=abc;i={len(entries):x}"
    assert counters["messages"] == {"mbox": {"sent": 1}, "route": {"sent": 1, "deferred": 1, "expired": 1},
                                    "edge": {"bounced": 1}, "postfix": {"sent": 1}}
    assert counters["rejects"] == {"submit": {"5xx|sender_login": 2}}
    assert counters["delay"]["route"]["count"] == 1 and counters["delay"]["route"]["sum"] == 12.0
    assert metrics.count_journal(lines, counters, LOG_NAMES, max_entries=3) == "s=abc;i=ff"


def test_read_journal_starts_at_the_end_then_follows_the_cursor(monkeypatch):
    calls = []

    class Popen:
        def __init__(self, command, **_):
            calls.append(command)
            self.stdout = iter(journal_lines([("postfix-route/smtp", STATUS_LINES[0][0])] * 3))

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

        def poll(self):
            return 0

        def wait(self):
            return 0

    def run(command, check=True):
        calls.append(command)
        return "\n".join(journal_lines([("postfix-route/smtp", STATUS_LINES[0][0])] * 7)) + "\n"

    monkeypatch.setattr(metrics.subprocess, "Popen", Popen)
    monkeypatch.setattr(metrics, "run", run)
    state = {}
    metrics.read_journal(state, LOG_NAMES, 100)
    # First run: only the cursor at the end of the journal, nothing counted.
    assert state["cursor"] == "s=abc;i=7" and state["counters"]["messages"] == {}
    assert "--lines=1" in calls[-1]
    metrics.read_journal(state, LOG_NAMES, 100)
    assert "--after-cursor=s=abc;i=7" in calls[-1]
    assert state["counters"]["messages"] == {"route": {"sent": 3}} and state["cursor"] == "s=abc;i=3"


def test_state_survives_only_when_well_formed(tmp_path):
    path = tmp_path / "postfix.json"
    state = {"cursor": "s=1", "counters": {"messages": {"route": {"sent": 4}}, "delay": {}, "rejects": {}}}
    metrics.save_state(str(path), state)
    assert metrics.load_state(str(path)) == state
    for broken in ("", "{", "[]", '{"counters": []}', '{"counters": {"messages": 1, "delay": {}, "rejects": {}}}'):
        path.write_text(broken)
        assert metrics.load_state(str(path)) == {}
    assert metrics.load_state(str(tmp_path / "missing")) == {}


# ---- exposition ---------------------------------------------------------------------------

def test_exposition_parses_back_with_the_contract_names_and_labels():
    counters = metrics.empty_counters()
    for identifier, line in [("postfix-route/smtp", STATUS_LINES[1][0]), ("postfix-route/smtp", STATUS_LINES[0][0]),
                             ("postfix-submit/smtpd", REJECTS[0][0])]:
        metrics.count_journal(journal_lines([(identifier, line)]), counters, LOG_NAMES)
    queues = {"route": {"deferred": (3, 7200.4), "active": (1, 2.0)}}
    deferred = {"route": {"mbox1": 2, 'we"ird\\hop': 1}}
    text = metrics.exposition(["submit", "route"], queues, deferred, counters)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert set(families) == {"ispmail_postfix_queue_messages", "ispmail_postfix_queue_oldest_seconds",
                             "ispmail_postfix_deferred_recipients", "ispmail_postfix_messages",
                             "ispmail_postfix_delivery_delay_seconds", "ispmail_postfix_rejects"}
    assert families["ispmail_postfix_messages"].type == "counter"
    assert families["ispmail_postfix_delivery_delay_seconds"].type == "histogram"

    def samples(family):
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for sample in families[family].samples}

    queue = samples("ispmail_postfix_queue_messages")
    assert len(queue) == 2 * len(metrics.QUEUES)
    assert queue[("ispmail_postfix_queue_messages", (("postfix_instance", "route"), ("queue", "deferred")))] == 3
    oldest = samples("ispmail_postfix_queue_oldest_seconds")
    assert oldest[("ispmail_postfix_queue_oldest_seconds", (("postfix_instance", "route"), ("queue", "deferred")))] \
        == 7200
    hops = samples("ispmail_postfix_deferred_recipients")
    assert hops[("ispmail_postfix_deferred_recipients", (("nexthop", 'we"ird\\hop'), ("postfix_instance", "route")))] \
        == 1
    messages = samples("ispmail_postfix_messages")
    assert messages[("ispmail_postfix_messages_total", (("postfix_instance", "route"), ("status", "sent")))] == 2
    assert messages[("ispmail_postfix_messages_total", (("postfix_instance", "submit"), ("status", "expired")))] == 0
    delay = samples("ispmail_postfix_delivery_delay_seconds")
    assert delay[("ispmail_postfix_delivery_delay_seconds_bucket", (("le", "0.5"), ("postfix_instance", "route")))] == 1
    assert delay[("ispmail_postfix_delivery_delay_seconds_bucket", (("le", "+Inf"), ("postfix_instance", "route")))] \
        == 2
    assert delay[("ispmail_postfix_delivery_delay_seconds_sum", (("postfix_instance", "route"),))] == 12.31
    assert delay[("ispmail_postfix_delivery_delay_seconds_count", (("postfix_instance", "submit"),))] == 0
    rejects = samples("ispmail_postfix_rejects")
    assert rejects == {("ispmail_postfix_rejects_total",
                        (("code", "5xx"), ("postfix_instance", "submit"), ("reason", "relay"))): 1}
