"""The Sieve helper that applies a user's keyword filters at delivery."""

import email.parser
import json
import importlib.machinery
import importlib.util
from pathlib import Path

HELPER = Path(__file__).resolve().parents[2] / "roles/mailbox/files/ispmail-keyword-filter"
loader = importlib.machinery.SourceFileLoader("ispmail_keyword_filter", str(HELPER))
spec = importlib.util.spec_from_loader(loader.name, loader)
helper = importlib.util.module_from_spec(spec)
loader.exec_module(helper)


def msg(headers):
    return email.parser.Parser().parsestr(headers + "\n\nbody\n", headersonly=True)


def test_filters_parse_whatever_separates_them():
    text = '{"action":"tag","contains":"a, b","header":"Subject"} {"action":"discard","contains":"x","header":"From"}'
    assert [f["action"] for f in helper.parse_filters(text)] == ["tag", "discard"]
    assert helper.parse_filters("") == []


def test_discard_wins_over_folder_and_tag():
    filters = [{"header": "Subject", "contains": "sale", "action": "tag"},
               {"header": "Subject", "contains": "sale", "action": "folder", "folder": "Ads"},
               {"header": "Subject", "contains": "SALE", "action": "discard"}]
    assert helper.verdict(filters, msg("Subject: Big sale")) == "discard"
    assert helper.verdict(filters[:2], msg("Subject: Big sale")) == "folder:Ads"
    assert helper.verdict(filters[:1], msg("Subject: Big sale")) == "tag"


def test_no_match_means_no_verdict():
    filters = [{"header": "From", "contains": "spammer@example.net", "action": "discard"}]
    assert helper.verdict(filters, msg("From: friend@example.org\nSubject: hi")) == ""


def test_encoded_japanese_subject_matches():
    # "未承諾広告" encoded as RFC 2047 UTF-8 base64, as Japanese mailers send it.
    subject = "=?UTF-8?B?5pyq5om/6Ku+5bqD5ZGKIOOCu+ODvOODqw==?="
    filters = [{"header": "Subject", "contains": "未承諾広告", "action": "folder", "folder": "広告"}]
    assert helper.verdict(filters, msg(f"Subject: {subject}")) == "folder:広告"


# Robustness (issue 16): any header, any filter text, and the helper still answers.

import base64  # noqa: E402

from header_strategies import any_header_value  # noqa: E402
from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SJIS_SUBJECT = "=?Windows-31J?B?" + base64.b64encode("未承諾広告".encode("cp932")).decode() + "?="


def raw_msg(data):
    return email.parser.BytesParser().parsebytes(data + b"\n\nbody\n", headersonly=True)


def test_legacy_japanese_charsets_and_raw_8bit_subjects_match():
    filters = [{"header": "Subject", "contains": "未承諾広告", "action": "discard"}]
    assert helper.verdict(filters, msg(f"Subject: {SJIS_SUBJECT}")) == "discard"
    assert helper.verdict(filters, msg(f"Subject: {SJIS_SUBJECT.replace('Windows-31J', 'x-sjis')}")) == "discard"
    assert helper.verdict(filters, raw_msg(b"Subject: " + "未承諾広告".encode("cp932"))) == "discard"


def test_broken_filter_text_skips_only_the_broken_filter():
    text = '{"action": "tag", "contains": {broken} {"action":"discard","contains":"x","header":"From"}'
    assert [f["action"] for f in helper.parse_filters(text)] == ["discard"]
    assert helper.parse_filters('{"action": "folder", "contains": "x", "header": "From"}') == []


@given(st.text(max_size=200) | st.lists(st.dictionaries(
    st.sampled_from(["header", "contains", "action", "folder"]),
    st.none() | st.integers() | st.sampled_from(["Subject", "x", "tag", "folder", "discard"])),
    max_size=4).map(lambda items: " ".join(json.dumps(item) for item in items)))
@example('{"action": "folder", "contains": "x", "header": "Subject"}')
@example('{"header": "Subject", "contains": 5, "action": "tag"} {')
def test_any_filter_text_parses_without_error(text):
    for item in helper.parse_filters(text):
        helper.verdict([item], msg("Subject: x"))


@given(st.lists(any_header_value, max_size=4))
@example([SJIS_SUBJECT, b"\x82\xa0\x00"])
def test_any_header_gets_a_verdict(values):
    data = b"".join(b"Subject: " + (v if isinstance(v, bytes) else v.encode("utf-8", "surrogatepass")) + b"\n"
                    for v in values)
    filters = [{"header": "Subject", "contains": "未承諾広告", "action": "tag"}]
    assert helper.verdict(filters, raw_msg(data)) in ("", "tag")


# The resident daemon (issue 20): Dovecot's script protocol over a real Unix socket.

import socket  # noqa: E402
import threading  # noqa: E402


class FixedFilters:
    """The directory's interface with the filters given (LDAP is the lab's part)."""

    def __init__(self, text):
        self.text, self.asked = text, []

    def filters(self, address):
        self.asked.append(address)
        return self.text


def ask(directory, request):
    """Send one request as Dovecot's program client does (then shut the write side) and
    return the whole answer."""
    client, server = socket.socketpair()
    worker = threading.Thread(target=helper.answer, args=(server, directory))
    worker.start()
    client.sendall(request)
    client.shutdown(socket.SHUT_WR)
    answer = b""
    while chunk := client.recv(4096):
        answer += chunk
    worker.join(5)
    client.close()
    return answer


NEWS = '{"action":"folder","contains":"newsletter","folder":"News","header":"Subject"}'


def request(*arguments, message=b"Subject: Weekly newsletter\r\n\r\nbody\r\n", options=("-",)):
    head = "VERSION\tscript\t4\t0\n" + "".join(f"{o}\n" for o in options) + "".join(f"{a}\n" for a in arguments)
    return head.encode() + b"\n" + message


def test_the_daemon_answers_the_verdict_then_success():
    directory = FixedFilters(NEWS)
    assert ask(directory, request("carol@example.org")) == b"folder:News+\n"
    assert directory.asked == ["carol@example.org"]


def test_the_daemon_skips_dovecot_options_and_unescapes_the_address():
    directory = FixedFilters(NEWS)
    answer = ask(directory, request("odd\x01tname@example.org",
                                    options=("alarm=10", "env_USER=carol@example.org", "-")))
    assert answer == b"folder:News+\n"
    assert directory.asked == ["odd\tname@example.org"]


def test_no_match_is_an_empty_verdict_and_a_big_body_is_drained():
    body = b"Subject: hello\r\n\r\n" + b"x" * 998 + b"\r\n" * 3000
    assert ask(FixedFilters(NEWS), request("carol@example.org", message=body)) == b"+\n"


def test_a_header_split_across_reads_is_still_seen():
    message = b"X-Pad: " + b"p" * 70000 + b"\r\nSubject: Weekly newsletter\r\n\r\nbody\r\n"
    assert ask(FixedFilters(NEWS), request("carol@example.org", message=message)) == b"folder:News+\n"


def test_something_else_than_dovecot_gets_a_failure_not_a_verdict():
    assert ask(FixedFilters(NEWS), b"GET / HTTP/1.0\r\n\r\n") == b"-\n"
    assert ask(FixedFilters(NEWS), b"VERSION\tscript\t4\t0\n-\n") == b"-\n"


def test_tab_unescape_is_dovecots_inverse():
    assert helper.tab_unescape("a\x011b\x01tc\x01rd\x01ne") == "a\x01b\tc\rd\ne"


def test_without_its_settings_the_daemon_still_answers_unfiltered(tmp_path):
    # It must reach accept(): a daemon that died first would leave Sieve waiting on the socket.
    broken = tmp_path / "broken.conf"
    broken.write_text("[ldap\nuris = ldap://x\n")
    for path in (tmp_path / "missing.conf", broken):
        directory = helper.Directory(path)
        assert directory.filters("carol@example.org") == ""
        assert ask(directory, request("carol@example.org")) == b"+\n"
