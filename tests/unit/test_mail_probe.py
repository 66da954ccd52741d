"""ispmail-mail-probe (role mail_probe): metrics, token matching, the probe's steps
against fake IMAP/SMTP clients on a fake clock, and the timeouts of a round.
The lab runs it against the real platform (docs: roles/mail_probe)."""

import imaplib
import smtplib
import threading
import time

import pytest

from scripts import load

probe = load("mail_probe/files/ispmail-mail-probe")

CONFIG = {
    "prober": "mon1", "helo": "mon1.lab.ispmail.test", "sender": "",
    "smtp_host": "10.213.0.10", "smtp_port": 25, "imap_host": "10.213.0.10", "imap_port": 993,
    "folders": ["INBOX", "Junk"], "timeout": 50, "poll_interval": 0.2,
}
TARGET = {"server": "mbox1", "address": "probe-mon1-mbox1@example.com"}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def mono(self):
        return self.now

    def wall(self):
        return 1_700_000_000.0 + self.now

    def sleep(self, seconds):
        self.now += seconds


class Mailbox:
    """The probe mailbox: folder -> {uid: subject}; mail shows up `delay` s after acceptance."""

    def __init__(self, clock, delay=0.5, folder="INBOX", password="secret", refuse=None):
        self.clock, self.delay, self.folder, self.password, self.refuse = clock, delay, folder, password, refuse
        self.folders = {"INBOX": {}, "Junk": {}}
        self.pending = []  # (visible at, folder, subject)
        self.next_uid = 1
        self.expunged = []

    def add(self, folder, subject):
        self.folders[folder][str(self.next_uid).encode()] = subject
        self.next_uid += 1

    def arrive(self):
        for item in [p for p in self.pending if p[0] <= self.clock.now]:
            self.pending.remove(item)
            self.add(item[1], item[2])


class FakeIMAP:
    def __init__(self, box):
        self.box, self.selected, self.deleted = box, None, set()

    def login(self, user, password):
        if password != self.box.password:
            # imaplib passes the server's reply as bytes.
            raise imaplib.IMAP4.error(b"[AUTHENTICATIONFAILED] Authentication failed.")

    def select(self, folder):
        self.box.arrive()
        name = folder.strip('"')
        self.selected = name if name in self.box.folders else None
        return ("OK", [b"1"]) if self.selected else ("NO", [b"Mailbox doesn't exist"])

    def uid(self, command, *args):
        messages = self.box.folders[self.selected]
        if command == "SEARCH":
            text = args[-1].strip('"')
            return "OK", [b" ".join(uid for uid, subject in messages.items() if text in subject)]
        if command == "FETCH":
            return "OK", [(b"1 (BODY[HEADER.FIELDS (SUBJECT)] {10}", f"Subject: {messages[args[0]]}\r\n\r\n".encode())]
        if command == "STORE":
            self.deleted |= set(args[0].encode().split(b","))
            return "OK", [None]
        raise AssertionError(command)

    def expunge(self):
        for uid in self.deleted:
            self.box.expunged.append(self.box.folders[self.selected].pop(uid))
        self.deleted = set()

    def logout(self):
        pass


class FakeSMTP:
    def __init__(self, box):
        self.box = box

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def sendmail(self, sender, rcpts, text):
        if self.box.refuse:
            raise smtplib.SMTPRecipientsRefused({rcpts[0]: (550, self.box.refuse.encode())})
        subject = next(line for line in text.decode().split("\r\n") if line.startswith("Subject: "))[9:]
        if self.box.delay is not None:
            self.box.pending.append((self.box.clock.now + self.box.delay, self.box.folder, subject))
        return {}


def run_probe(box, clock, config=CONFIG, password="secret"):
    checker = probe.Probe(config, password, mono=clock.mono, wall=clock.wall, sleep=clock.sleep,
                          imap_factory=lambda deadline: FakeIMAP(box), smtp_factory=lambda deadline: FakeSMTP(box))
    return checker.run(TARGET, clock.now + config["timeout"])


# Metrics.

def test_metrics_render_every_server_with_its_label():
    states = {
        "mbox1": probe.ServerState(success=1, delay=0.4321, last_success=1_700_000_000.5),
        "mbox2": probe.ServerState(success=0, delay=None, last_success=0.0),
    }
    text = probe.render_metrics(["mbox1", "mbox2"], states)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        'ispmail_probe_delivery_seconds{mailbox_server="mbox1"} 0.432',
        'ispmail_probe_success{mailbox_server="mbox1"} 1',
        'ispmail_probe_success{mailbox_server="mbox2"} 0',
        'ispmail_probe_last_success_timestamp_seconds{mailbox_server="mbox1"} 1700000000.500',
        'ispmail_probe_last_success_timestamp_seconds{mailbox_server="mbox2"} 0.000',
    ]
    assert "# TYPE ispmail_probe_success gauge" in text
    assert text.endswith("\n")


def test_metrics_escape_label_values():
    text = probe.render_metrics(['a"b\\c'], {'a"b\\c': probe.ServerState(success=1)})
    assert 'ispmail_probe_success{mailbox_server="a\\"b\\\\c"} 1' in text


def test_metrics_file_is_replaced_atomically_and_restores_the_last_success(tmp_path):
    output = tmp_path / "mail_probe.prom"
    config = dict(CONFIG, output=str(output), targets=[TARGET, {"server": "mbox2", "address": "x@example.com"}])
    first = probe.Prober(config, probe=None)
    first.states["mbox1"] = probe.ServerState(success=1, delay=0.3, last_success=1_700_000_123.25)
    first.states["mbox2"] = probe.ServerState(success=0)
    first.publish()
    assert [p.name for p in tmp_path.iterdir()] == ["mail_probe.prom"]
    assert oct(output.stat().st_mode & 0o777) == "0o644"
    # A restart keeps the last success (the alert on its age must not reset).
    again = probe.Prober(config, probe=None)
    assert again.states["mbox1"].last_success == 1_700_000_123.25
    assert again.states["mbox2"].last_success == 0.0


# Tokens.

def test_subject_round_trip_and_token_match():
    token = probe.new_token()
    subject = probe.make_subject("mon1", "mbox1", 1_700_000_000.25, token)
    fields = probe.parse_subject(subject)
    assert fields == {"prober": "mon1", "server": "mbox1", "sent": 1_700_000_000.25, "token": token}
    assert probe.matches(subject, token)
    assert not probe.matches(subject, probe.new_token())
    # A spam tag the platform prepends does not hide the token.
    assert probe.matches("[SPAM] " + subject, token)
    assert probe.parse_subject("Re: hello") is None
    assert probe.parse_subject(None) is None


def test_message_carries_the_token_in_subject_and_message_id():
    token = probe.new_token()
    subject, text = probe.make_message(CONFIG, TARGET, token, 1_700_000_000.0)
    assert probe.matches(subject, token)
    assert f"Message-ID: <ispmail-probe.{token}@mon1.lab.ispmail.test>" in text
    assert "To: <probe-mon1-mbox1@example.com>" in text
    text.encode("ascii")


# One probe.

def test_a_delivered_message_gives_its_delay_and_is_deleted():
    clock = Clock()
    box = Mailbox(clock, delay=0.5)
    result = run_probe(box, clock)
    assert result.ok and result.folder == "INBOX"
    assert 0.5 <= result.delay <= 0.5 + CONFIG["poll_interval"] + 1e-9
    assert box.folders == {"INBOX": {}, "Junk": {}}
    assert len(box.expunged) == 1 and probe.parse_subject(box.expunged[0])["server"] == "mbox1"


def test_a_message_in_junk_is_found_there():
    clock = Clock()
    box = Mailbox(clock, delay=1.0, folder="Junk")
    result = run_probe(box, clock)
    assert result.ok and result.folder == "Junk"


def test_a_missing_junk_folder_is_skipped():
    clock = Clock()
    box = Mailbox(clock, delay=0.2)
    del box.folders["Junk"]
    assert run_probe(box, clock).ok


def test_stale_probe_messages_are_removed_first(capsys):
    clock = Clock()
    box = Mailbox(clock, delay=0.5)
    old = probe.make_subject("mon1", "mbox1", clock.wall() - 300, probe.new_token())
    box.add("INBOX", old)
    box.add("Junk", probe.make_subject("mon1", "mbox1", clock.wall() - 90, probe.new_token()))
    box.add("INBOX", "a subscriber's message")
    result = run_probe(box, clock)
    assert result.ok
    assert box.folders == {"INBOX": {b"3": "a subscriber's message"}, "Junk": {}}
    err = capsys.readouterr().err
    assert "<4>mbox1: removing a stale probe message from INBOX, sent 300 s ago" in err
    assert "from Junk, sent 90 s ago" in err


def test_a_message_not_visible_in_time_fails_with_the_time_waited():
    clock = Clock()
    box = Mailbox(clock, delay=None)  # accepted, never delivered
    result = run_probe(box, clock)
    assert not result.ok
    assert "not visible over IMAP after" in result.reason
    assert CONFIG["timeout"] - 1 <= result.delay <= CONFIG["timeout"]


def test_a_late_message_counts_as_a_timeout():
    clock = Clock()
    box = Mailbox(clock, delay=CONFIG["timeout"] + 5)
    assert not run_probe(box, clock).ok


def test_an_smtp_refusal_fails_with_the_reply_and_no_delay():
    clock = Clock()
    box = Mailbox(clock, refuse="5.1.1 <probe-mon1-mbox1@example.com>: Recipient address rejected")
    result = run_probe(box, clock)
    assert not result.ok and result.delay is None
    assert "did not accept the message" in result.reason and "550 5.1.1" in result.reason


def test_a_wrong_password_fails_with_the_login_refusal():
    clock = Clock()
    box = Mailbox(clock)
    result = run_probe(box, clock, password="wrong")
    assert not result.ok and result.delay is None
    assert "IMAP login as probe-mon1-mbox1@example.com refused" in result.reason
    assert result.reason.endswith("refused: [AUTHENTICATIONFAILED] Authentication failed.")


def test_a_connection_failure_is_a_failed_probe():
    clock = Clock()

    def refused(deadline):
        raise ConnectionRefusedError(111, "Connection refused")

    checker = probe.Probe(CONFIG, "secret", mono=clock.mono, wall=clock.wall, sleep=clock.sleep, imap_factory=refused)
    result = checker.run(TARGET, clock.now + 50)
    assert not result.ok and "IMAP connection to 10.213.0.10:993 failed" in result.reason


def test_socket_timeouts_never_exceed_the_time_left():
    clock = Clock()
    checker = probe.Probe(dict(CONFIG, io_timeout=10), "secret", mono=clock.mono)
    assert checker._timeout(clock.now + 50) == 10
    assert checker._timeout(clock.now + 3) == 3
    assert checker._timeout(clock.now + 0.2) == 1.0
    with pytest.raises(probe.ProbeError):
        checker._timeout(clock.now - 1)


# Rounds: every server at once, none waits for a dead one.

class ScriptedProbe:
    """Results by server; a server in `stuck` blocks until released."""

    def __init__(self, results, stuck=()):
        self.results, self.stuck, self.release = results, set(stuck), threading.Event()

    def run(self, target, deadline):
        if target["server"] in self.stuck:
            self.release.wait(10)
        return self.results[target["server"]]


def make_prober(tmp_path, scripted, timeout=0.3, grace=0.2):
    config = dict(CONFIG, output=str(tmp_path / "mail_probe.prom"), timeout=timeout, grace=grace,
                  targets=[{"server": "mbox1", "address": "a@example.com"},
                           {"server": "mbox2", "address": "b@example.com"}])
    return probe.Prober(config, scripted)


def test_a_stalled_server_does_not_hold_up_the_others(tmp_path, capsys):
    scripted = ScriptedProbe({"mbox1": probe.Result(True, delay=0.4, folder="INBOX"),
                              "mbox2": probe.Result(True, delay=1)}, stuck={"mbox2"})
    prober = make_prober(tmp_path, scripted)
    began = time.monotonic()
    results = prober.round()
    assert time.monotonic() - began < 2
    assert results["mbox1"].ok and not results["mbox2"].ok
    assert "stalled" in results["mbox2"].reason
    assert prober.states["mbox1"].success == 1 and prober.states["mbox1"].last_success > 0
    assert prober.states["mbox2"].success == 0 and prober.states["mbox2"].last_success == 0
    # Still stuck at the next round: no second thread piles up behind it.
    again = prober.round()
    assert again["mbox2"].reason == "the previous probe is still running (stalled)"
    scripted.release.set()
    prober.states["mbox2"].running.join(5)
    scripted.stuck.clear()
    assert prober.round()["mbox2"].ok
    err = capsys.readouterr().err
    assert "<3>mbox2: probe failed: no result within" in err
    assert "<6>mbox1: delivered in 0.400 s, found in INBOX" in err


def test_a_failure_keeps_the_last_success_time_and_publishes_success_zero(tmp_path):
    scripted = ScriptedProbe({"mbox1": probe.Result(True, delay=0.25, folder="INBOX"),
                              "mbox2": probe.Result(True, delay=0.5, folder="INBOX")})
    prober = make_prober(tmp_path, scripted)
    prober.round()
    last = prober.states["mbox2"].last_success
    scripted.results["mbox2"] = probe.Result(False, reason="IMAP login refused")
    prober.round()
    prober.publish()
    text = (tmp_path / "mail_probe.prom").read_text()
    assert 'ispmail_probe_success{mailbox_server="mbox2"} 0' in text
    assert f'ispmail_probe_last_success_timestamp_seconds{{mailbox_server="mbox2"}} {last:.3f}' in text
    assert 'ispmail_probe_delivery_seconds{mailbox_server="mbox2"}' not in text
    assert 'ispmail_probe_delivery_seconds{mailbox_server="mbox1"} 0.250' in text
