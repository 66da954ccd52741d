"""The resilience run's pure parts, without a lab: `pytest tests/resilience`."""

import smtplib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "bench" / "side_by_side"), str(HERE.parent)]
import delivery  # noqa: E402
import faults  # noqa: E402
import summary  # noqa: E402
from labmap import expected_mailboxes, lab_users  # noqa: E402
from load import backoff, classify  # noqa: E402

GIB = 2**30


def test_backoff_doubles_up_to_a_minute():
    assert [backoff(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_4xx_and_dropped_connections_are_retried_5xx_is_final():
    assert classify(smtplib.SMTPDataError(451, b"try later")) == "refused"
    assert classify(smtplib.SMTPRecipientsRefused({"a@b.c": (450, b"no")})) == "refused"
    assert classify(smtplib.SMTPSenderRefused(553, b"no", "x")) == "rejected"
    assert classify(smtplib.SMTPServerDisconnected("gone")) == "connection"
    assert classify(ConnectionRefusedError()) == "connection"


def test_forwards_are_followed_to_their_mailboxes():
    users = lab_users(HERE.parents[1])
    assert expected_mailboxes(users, "alice@example.com") == ["alice@example.com"]
    assert expected_mailboxes(users, "bob@example.com") == ["bob@example.com", "carol@example.org"]  # keeps a copy
    assert expected_mailboxes(users, "erin@example.com") == ["alice@example.com"]  # no copy
    assert users["carol@example.org"]["spam_check"] and not users["dave@example.org"]["spam_check"]


def test_dovecot_file_names_give_the_delivery_time_and_host():
    assert delivery.name_time("1765000000.M123456P42.mbox1,S=100,W=102:2,S") == (1765000000.123456, "mbox1")
    assert delivery.name_time("1765000000.M5P42.mbox2.lab.ispmail.test,S=1") == (1765000000.000005, "mbox2")
    assert delivery.name_time("something-else") == (None, None)


def test_maildir_index_reads_only_this_runs_files(tmp_path):
    root = tmp_path / "Maildir"
    for folder in ("new", "cur", ".Junk/new", ".Junk/cur"):
        (root / folder).mkdir(parents=True)
    mine = b"X-Resilience-Run: r1\nX-Resilience-Token: " + b"a" * 32 + b"\nSubject: x\n\nbody\n"
    (root / "new" / "2000000000.M1P1.mbox1,S=1").write_bytes(mine)
    (root / ".Junk" / "cur" / "2000000001.M1P1.mbox1,S=1:2,").write_bytes(mine)
    (root / "new" / "2000000002.M1P1.mbox1,S=1").write_bytes(mine.replace(b"r1", b"r2"))
    (root / "new" / "1000000000.M1P1.mbox1,S=1").write_bytes(mine)  # before the run: not opened
    index = delivery.MaildirIndex({"u@x": root}, "r1", since=1500000000).refresh()
    copies = index.by_token()["a" * 32]
    assert sorted((c["folder"], c["delivered"]) for c in copies) == [("INBOX", 2000000000.000001),
                                                                     ("Junk", 2000000001.000001)]
    # A move from new/ to cur/ is the same delivery, not a second one.
    (root / "new" / "2000000000.M1P1.mbox1,S=1").rename(root / "cur" / "2000000000.M1P1.mbox1,S=1:2,S")
    assert len(index.refresh().by_token()["a" * 32]) == 2


def record(accepted=100.0, created=99.0, state="accepted"):
    return {"accepted": accepted, "created": created, "state": state}


def copy(user, delivered, folder="INBOX"):
    return {"user": user, "delivered": delivered, "folder": folder, "host": "mbox1"}


def test_verdicts():
    boxes = ["a", "c"]
    ok = delivery.verdict(record(), boxes, [copy("a", 101.0), copy("c", 103.0)], [])
    assert (ok["status"], ok["delay"], ok["total_delay"], ok["duplicates"]) == ("delivered", 3.0, 4.0, 0)
    twice = delivery.verdict(record(), ["a"], [copy("a", 101.0), copy("a", 160.0)], [])
    assert twice["status"] == "delivered" and twice["duplicates"] == 1 and twice["delay"] == 1.0
    assert delivery.verdict(record(), boxes, [copy("a", 101.0)], [])["status"] == "lost"
    assert delivery.verdict(record(), boxes, [copy("a", 101.0)], ["gw1:/q"])["status"] == "queued"
    assert delivery.verdict(record(None, state="unsent"), ["a"], [], [])["status"] == "unsent"
    assert delivery.verdict(record(None, state="unsent"), ["a"], [copy("a", 1.0)], [])["status"] == "unacknowledged"
    assert delivery.verdict(record(), ["a"], [copy("a", 101.0, "Junk")], [])["wrong_folder"] == ["a/Junk"]
    assert delivery.verdict(record(), ["a"], [copy("a", 101.0), copy("b", 102.0)], [])["misplaced"] == ["b"]


def message(created, accepted, delay, attempts=1, status="delivered"):
    return {"created": created, "accepted": accepted, "kind": "inbound",
            "attempts": [{"start": created + i, "outcome": "accepted" if i == attempts - 1 else "refused",
                          "error": None if i == attempts - 1 else "451"} for i in range(attempts)],
            "verdict": {"status": status, "delay": delay, "total_delay": None if delay is None else delay + 1,
                        "duplicates": 0, "misplaced": [], "wrong_folder": []}}


def test_fault_windows_and_the_slow_line():
    messages = [message(5, 5.5, 1.0), message(12, 40, 100.0, attempts=3), message(15, 15.2, None, status="lost"),
                message(50, 50.1, 0.5)]
    reads = [{"start": 13, "ok": False, "error": "EOF"}, {"start": 51, "ok": True, "error": None}]
    faults_run = [{"name": "rspamd", "start": 10, "end": 30}, {"name": "clamd", "skipped": "no", "start": None}]
    rows = summary.windows(messages, reads, faults_run, 0, 60)
    rspamd, quiet, whole = rows
    assert (rspamd["sent"], rspamd["accepted"], rspamd["delivered"], rspamd["lost"]) == (2, 2, 1, 1)
    assert (rspamd["refused_attempts"], rspamd["read_errors"], rspamd["max_total_delay"]) == (2, 1, 101.0)
    assert (quiet["sent"], quiet["delivered"], quiet["median_delay"]) == (2, 2, 0.75)
    assert whole["sent"] == 4
    assert summary.slow_faults(rows) == [("rspamd", 101.0)]
    text = summary.table(rows, faults_run)
    assert "skipped clamd: no" in text and "more than 60 s of delay: rspamd (max 101 s)" in text


def test_a_queue_on_the_hosts_own_disk_is_not_filled():
    host = (100 * GIB, 40 * GIB, "ext4")
    assert "no size limit" in faults.queue_full_possible((100 * GIB, 40 * GIB, "overlay"), host)
    assert "too much" in faults.queue_full_possible((20 * GIB, 10 * GIB, "xfs"), (100 * GIB, 40 * GIB, "ext4"))
    assert faults.queue_full_possible((1 * GIB, GIB // 2, "tmpfs"), (100 * GIB, 40 * GIB, "ext4")) is None


def test_the_threshold_fault_asks_for_more_than_any_disk_has():
    free = 80 * GIB
    assert faults.queue_minfree_above(free) > free + 1000 * GIB
