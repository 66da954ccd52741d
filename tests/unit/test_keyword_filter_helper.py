"""The Sieve helper that applies a user's keyword filters at delivery."""

import email.parser
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
