"""ispmail-virus-notice (clamav-milter's VirusAction): who is told, and what the notice
looks like on the wire (no LDAP or SMTP needed; the lab sends real ones)."""

import base64
import email
import email.policy

import ispmail_headers
import pytest
from header_strategies import addresses, any_header_value
from hypothesis import example, given
from hypothesis import strategies as st
from scripts import load

notice_script = load("postfix_gateway/files/ispmail-virus-notice")

SJIS_SUBJECT = "=?Windows-31J?B?" + base64.b64encode("未承諾広告".encode("cp932")).decode() + "?="
HOSTED = {"example.com": {"ispmailVirusNotifySender": "TRUE"}, "example.org": {}}
NOTICE = {"ispmailVirusNoticeFrom": "ウイルス通知 <postmaster@example.com>",
          "ispmailVirusNoticeSubject": "【警告】ウイルスを検出しました", "ispmailVirusNoticeBody": "本文"}


@pytest.fixture(autouse=True)
def directory(monkeypatch):
    monkeypatch.setattr(notice_script, "domain_notice", lambda config, domain: HOSTED.get(domain))


def test_inbound_the_recipient_and_a_hosted_sender_are_told():
    assert notice_script.plan({}, "bob@example.org", "alice@example.com")[2] == ["alice@example.com",
                                                                                 "bob@example.org"]
    assert notice_script.plan({}, "carol@example.com", "alice@example.com")[2] == ["alice@example.com",
                                                                                   "carol@example.com"]


def test_inbound_an_outside_sender_is_never_told():
    # Nearly always forged: the notice would go to an innocent (backscatter).
    assert notice_script.plan({}, "forged@victim.example", "alice@example.com")[2] == ["alice@example.com"]


def test_outbound_only_the_sending_subscriber_is_told():
    assert notice_script.plan({}, "bob@example.org", "friend@elsewhere.example") == (
        "example.org", {}, ["bob@example.org"])
    assert notice_script.plan({}, "x@elsewhere.example", "y@elsewhere.example")[2] == []


def header_section(msg):
    return msg.as_bytes().split(b"\r\n\r\n", 1)[0]


def test_the_notice_headers_are_7bit_and_read_back():
    msg = notice_script.build_notice(NOTICE, "example.com", "alice@example.com", "Eicar-Signature",
                                     SJIS_SUBJECT, "<m@x>", "today")
    head = header_section(msg)
    assert all(byte < 128 for byte in head), head
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == NOTICE["ispmailVirusNoticeSubject"]
    assert parsed["From"].addresses[0].display_name == "ウイルス通知"
    # The virus message's subject, whatever its charset, is readable in the text.
    assert "Subject: 未承諾広告" in parsed.get_content()


@given(addresses, st.text(max_size=40), any_header_value, st.text(max_size=30),
       st.dictionaries(st.sampled_from(list(NOTICE)), st.text(max_size=60)))
@example("alice@example.com", "Eicar", "\udcff\udcfe raw", "<m@x>", NOTICE)
@example('"john doe"@example.com', "x", b"\x82\xa0", "", {})
@example("a(comment)@example.com", "x", "=?unknown-8bit?Q?=E9?=", "", {"ispmailVirusNoticeSubject": "é\nX: y"})
def test_any_notice_builds_with_7bit_headers(to, virus, subject, message_id, notice):
    to = to.replace("\r", "").replace("\n", "")  # an envelope address never holds a line break
    subject = subject.decode("latin-1") if isinstance(subject, bytes) else subject
    msg = notice_script.build_notice(notice, "example.com", to, virus, subject, message_id, "")
    head = header_section(msg)
    assert all(byte < 128 for byte in head), head
    assert ispmail_headers.header_text(str(msg["Subject"])) is not None


class SMTP:
    """smtplib.SMTP as route answers it: keeps what is sent."""

    sent = []

    def __init__(self, host, port, timeout):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def send_message(self, msg, from_addr, to_addrs):
        self.sent.append((msg.as_bytes(), from_addr, to_addrs))


def test_main_sends_7bit_notices_for_a_raw_8bit_subject(tmp_path, monkeypatch):
    config = tmp_path / "notice.conf"
    config.write_text("[ldap]\n[smtp]\nhost = 127.0.0.1\nport = 10026\n")
    monkeypatch.setattr(notice_script, "CONFIG", str(config))
    monkeypatch.setattr(notice_script.smtplib, "SMTP", SMTP)
    SMTP.sent.clear()
    # clamav-milter passes the raw header; 8-bit bytes arrive on the command line as surrogates.
    raw_subject = "未承諾広告".encode("cp932").decode("utf-8", "surrogateescape")
    argv = ["ispmail-virus-notice", "Eicar", "4ABCD1", "<forged@victim.example>", "<alice@example.com>",
            raw_subject, "<m@x>", "today"]
    assert notice_script.main(argv) == 0
    [(data, sender, targets)] = SMTP.sent
    assert sender == "" and targets == ["alice@example.com"]
    assert all(byte < 128 for byte in data.split(b"\r\n\r\n", 1)[0])
    assert "Subject: 未承諾広告" in email.message_from_bytes(data, policy=email.policy.default).get_content()
