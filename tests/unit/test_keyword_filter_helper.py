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
