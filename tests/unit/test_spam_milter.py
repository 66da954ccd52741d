"""The scan instance's milter: whose address rspamd judges, the verdict, the subject tag
(no milter or rspamd needed; the lab tests run the real chain)."""

import email.header
import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

MILTER = Path(__file__).resolve().parents[2] / "roles/spamcheck/files/ispmail-spam-milter"
loader = importlib.machinery.SourceFileLoader("ispmail_spam_milter", str(MILTER))
spec = importlib.util.spec_from_loader(loader.name, loader)
spam_milter = importlib.util.module_from_spec(spec)
loader.exec_module(spam_milter)

EDGE = "spam1.lab.ispmail.test"
OURS = (f"from inet1.example.net (inet1.example.net [10.213.0.80])\n\tby {EDGE} (Postfix) with ESMTP id B1\n"
        "\tfor <alice@example.com>; Sun, 29 Nov 2026 02:25:35 +0000 (UTC)")
SCAN = "from localhost (localhost [127.0.0.1])\n\tby scan.spam1.lab.ispmail.test (Postfix) with ESMTP id C2"
FORGED = f"from evil (evil [192.0.2.1])\n\tby {EDGE} (Postfix) with ESMTP id X"


def decoded(value):
    return str(email.header.make_header(email.header.decode_header(value)))


def test_client_facts_come_from_the_topmost_header_of_this_edge():
    # The scan instance's own header and a forged one further down are both ignored.
    assert spam_milter.client_facts([SCAN, OURS, FORGED], EDGE) == ("10.213.0.80", "inet1.example.net",
                                                                    "inet1.example.net")


def test_unknown_reverse_name_and_missing_header():
    unknown = f"from mail.example.net (unknown [198.51.100.7])\n\tby {EDGE} (Postfix) with ESMTP id D"
    assert spam_milter.client_facts([unknown], EDGE) == ("198.51.100.7", "mail.example.net", "")
    assert spam_milter.client_facts([SCAN], EDGE) is None


@pytest.mark.parametrize("action, spam", [("reject", True), ("add header", True), ("rewrite subject", True),
                                          ("no action", False), ("soft reject", False), ("greylist", False)])
def test_verdict_follows_rspamds_action(action, spam):
    assert spam_milter.is_spam({"action": action, "score": 0.0}) is spam


def test_spamd_result_lists_score_and_symbols():
    result = {"action": "add header", "score": 7.5, "required_score": 15.0,
              "symbols": {"R_SPF_FAIL": {"score": 1.0}, "DMARC_POLICY_REJECT": {"score": 2.0}}}
    assert spam_milter.spamd_result(result) == \
        "default: True [7.50 / 15.00]; DMARC_POLICY_REJECT(2.00), R_SPF_FAIL(1.00)"


def test_ascii_tag_goes_in_front():
    assert spam_milter.tagged_subject("Cheap pills", "[SPAM]") == "[SPAM] Cheap pills"


def test_japanese_tag_is_encoded_and_reads_back():
    subject = spam_milter.tagged_subject("Cheap pills", "【迷惑メール】")
    assert subject.isascii()
    assert decoded(subject) == "【迷惑メール】 Cheap pills"


def test_japanese_tag_before_an_encoded_subject_keeps_its_space():
    original = email.header.Header("セール", "iso-2022-jp").encode()
    subject = spam_milter.tagged_subject(original, "【迷惑メール】")
    assert decoded(subject) == "【迷惑メール】 セール"


def test_tagging_twice_and_empty_cases():
    once = spam_milter.tagged_subject("Hello", "[SPAM]")
    assert spam_milter.tagged_subject(once, "[SPAM]") == once
    assert spam_milter.tagged_subject(None, "[SPAM]") == "[SPAM]"
    assert spam_milter.tagged_subject("Hello", "") == "Hello"


# Robustness (issue 16): forged Received headers, odd charsets, big messages.

import base64  # noqa: E402
import contextlib  # noqa: E402
import http.client  # noqa: E402
import http.server  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from unittest import mock  # noqa: E402

import ispmail_headers  # noqa: E402

from header_strategies import addresses, any_header_value, as_milter_str, header_values  # noqa: E402
from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from scripts import Milter, run_milter  # noqa: E402

SJIS_SUBJECT = "=?Windows-31J?B?" + base64.b64encode("未承諾広告".encode("cp932")).decode() + "?="


def test_a_multi_word_helo_does_not_hand_the_check_to_a_forged_header():
    ours = f"from mail server (inet1.example.net [10.213.0.80])\n\tby {EDGE} (Postfix) with ESMTP id B1"
    assert spam_milter.client_facts([SCAN, ours, FORGED], EDGE) == ("10.213.0.80", "mail server",
                                                                    "inet1.example.net")
    # A HELO that imitates a whole Received line: the client is still the one Postfix saw.
    trick = f"x (evil [192.0.2.1]) by {EDGE} (Postfix)"
    ours = f"from {trick} (unknown [198.51.100.7])\n\tby {EDGE} (Postfix) with ESMTP id B2"
    assert spam_milter.client_facts([ours, FORGED], EDGE) == ("198.51.100.7", trick, "")


def test_an_edge_header_that_does_not_parse_is_not_passed_over():
    broken = f"from ???\n\tby {EDGE} (Postfix) with ESMTP id B3"
    assert spam_milter.client_facts([SCAN, broken, FORGED], EDGE) is None


def test_ipv6_clients():
    ours = f"from mx.example.net (mx.example.net [IPv6:2001:db8::25])\n\tby {EDGE} (Postfix) with ESMTPS id B4"
    assert spam_milter.client_facts([ours], EDGE) == ("2001:db8::25", "mx.example.net", "mx.example.net")


@given(st.lists(header_values, max_size=4), st.text(max_size=40))
@example(["from a b (c [1.2.3.4]) by e (Postfix)"], "e")
@example([f"from \udcff (x [::1])\n\tby {EDGE} (Postfix)"], EDGE)
def test_client_facts_never_raise(values, edge):
    facts = spam_milter.client_facts(values, edge or EDGE)
    assert facts is None or all(isinstance(fact, str) for fact in facts)


@given(header_values, st.text(max_size=20) | st.sampled_from(["[SPAM]", "【迷惑メール】", "[SPAM]\r\nBcc: x"]))
@example(SJIS_SUBJECT, "[SPAM]")
@example(as_milter_str("未承諾広告".encode("cp932")), "[SPAM]")
@example("\0", "[SPAM]")
def test_tagged_subjects_are_always_printable_ascii_headers(subject, tag):
    tagged = spam_milter.tagged_subject(subject, tag)
    if tagged != subject.strip():
        assert tagged.isascii() and "\0" not in tagged and "\r" not in tagged
        assert all(line[:1] in (" ", "\t") for line in tagged.split("\n")[1:])


def test_a_raw_shift_jis_subject_is_tagged_and_encoded():
    raw = as_milter_str("未承諾広告".encode("cp932"))
    assert decoded(spam_milter.tagged_subject(raw, "[SPAM]")) == "[SPAM] 未承諾広告"


def http_request_head(envelope):
    """The request head http.client would send rspamd for these envelope values."""
    connection = http.client.HTTPConnection("localhost")
    connection.putrequest("POST", "/checkv2")
    for name, value in envelope.items():
        if value:
            connection.putheader(name, spam_milter.http_value(value))
    return b"".join(connection._buffer)


def test_envelope_values_are_valid_http_header_values():
    head = http_request_head({"From": "日本@example.jp", "Rcpt": "\udcff@example.com", "Helo": "a\r\nInjected: yes",
                              "Hostname": "nul\0"})
    assert b"\r\nInjected" not in head


CONFIG = {"milter": {"edge_hostname": EDGE}, "rspamd": {"settings_id": "ispmail_inbound"}}
OURS_SPAM = f"from inet1.example.net (inet1.example.net [10.213.0.80])\n\tby {EDGE} (Postfix) with ESMTP id B1"


class Tags:
    def subject_tag(self, domain):
        return "【迷惑メール】"


@contextlib.contextmanager
def spam_check():
    """A SpamCheck milter (stand-in pymilter) whose rspamd says spam; `asked` keeps what
    rspamd got: (message bytes, size, envelope, the spool file)."""
    asked = []

    def ask_rspamd(config, message, size, envelope):
        asked.append((message.read(), size, envelope, message))
        return {"action": "add header", "score": 9.0, "required_score": 6.0, "symbols": {}}

    with mock.patch.dict(sys.modules, Milter=Milter), mock.patch.object(spam_milter, "ask_rspamd", ask_rspamd):
        check = spam_milter.milter_class(CONFIG, Tags())()
        check.asked = asked
        yield check


@pytest.fixture
def milter():
    with spam_check() as check:
        yield check


def test_a_legacy_charset_subject_is_tagged_not_deferred(milter):
    answer = run_milter(milter, "a@example.net", ["alice@example.com"],
                        [("Received", OURS_SPAM), ("Subject", SJIS_SUBJECT)], b"hello\r\n")
    assert answer == Milter.ACCEPT
    [(_, name, index, subject)] = [c for c in milter.changes if c[0] == "chgheader"]
    assert ispmail_headers.header_text(subject) == "【迷惑メール】 未承諾広告"


def test_rspamd_gets_the_client_from_the_edge_header_and_the_message_spooled(milter, monkeypatch):
    monkeypatch.setattr(spam_milter, "SPOOL_IN_MEMORY", 1000)
    body = b"x" * 5000 + b"\r\n"
    run_milter(milter, "a@example.net", ["alice@example.com"], [("Received", OURS_SPAM), ("Subject", "hi")], body)
    [(sent, size, envelope, spool)] = milter.asked
    assert envelope["IP"] == "10.213.0.80" and envelope["Helo"] == "inet1.example.net"
    assert sent.endswith(b"\r\n\r\n" + body) and size == len(sent)
    assert spool._rolled and not isinstance(spool._file, io.BytesIO)  # on disk, not in memory
    assert spool.closed  # and gone once the message is answered


@given(addresses, st.lists(addresses, min_size=1, max_size=3),
       st.lists(st.tuples(st.sampled_from(["Subject", "Received", "From", "X-Other"]), any_header_value),
                max_size=6), st.binary(max_size=200))
@example("a@example.net", ["alice@example.com"], [("Received", OURS_SPAM), ("Subject", SJIS_SUBJECT)], b"")
@example("\udcff@example.net", ["日本@example.jp"], [("Subject", "\0")], b"")
def test_no_message_makes_the_milter_defer(sender, recipients, headers, body):
    headers = [(name, value.decode("latin-1") if isinstance(value, bytes) else value) for name, value in headers]
    with spam_check() as milter:
        assert run_milter(milter, sender, recipients, headers, body) == Milter.ACCEPT
    [(_, size, envelope, _)] = milter.asked
    http_request_head(envelope)


def test_ask_rspamd_streams_the_spooled_message_with_its_length():
    received = {}

    class Rspamd(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received["headers"] = self.headers
            received["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            answer = json.dumps({"action": "no action", "score": 0.5}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Rspamd) as server:
        threading.Thread(target=server.handle_request, daemon=True).start()
        message = tempfile.SpooledTemporaryFile(16)
        message.write(b"Subject: hi\r\n\r\n" + b"y" * 100_000)
        size = message.tell()
        message.seek(0)
        config = {"rspamd": {"url": f"http://127.0.0.1:{server.server_address[1]}/", "timeout": "10"}}
        result = spam_milter.ask_rspamd(config, message, size, {"From": "\udcff@example.net", "IP": "192.0.2.1"})
    assert result["action"] == "no action"
    assert received["body"] == b"Subject: hi\r\n\r\n" + b"y" * 100_000
    assert received["headers"]["IP"] == "192.0.2.1"  # HTTP header names: any case
    assert received["headers"]["From"] == "\udcff@example.net".encode("utf-8", "surrogateescape").decode("latin-1")
