"""The vscan milter's operator keyword filters: matching and precedence (no milter needed)."""

import importlib.machinery
import importlib.util
from email.header import Header
from pathlib import Path

FILTER = Path(__file__).resolve().parents[2] / "roles/postfix_gateway/files/ispmail-operator-filter"
loader = importlib.machinery.SourceFileLoader("ispmail_operator_filter", str(FILTER))
spec = importlib.util.spec_from_loader(loader.name, loader)
operator_filter = importlib.util.module_from_spec(spec)
loader.exec_module(operator_filter)

FILTERS = operator_filter.parse_filters([
    '{"header": "Subject", "contains": "未承諾広告", "action": "tag"}',
    '{"header": "X-Mailer", "contains": "bulkmailer", "action": "hold"}',
    '{"header": "Subject", "contains": "WIN A FREE PRIZE", "action": "discard"}',
])


def test_encoded_japanese_subject_matches():
    encoded = Header("【未承諾広告】セール", "utf-8").encode()
    assert "未承諾広告" not in encoded
    action, item = operator_filter.verdict(FILTERS, [("Subject", encoded)])
    assert action == "tag" and item["contains"] == "未承諾広告"


def test_header_names_and_text_match_case_insensitively():
    assert operator_filter.verdict(FILTERS, [("x-mailer", "BulkMailer 2.0")])[0] == "hold"


def test_strongest_action_wins():
    headers = [("Subject", "win a free prize"), ("X-Mailer", "BulkMailer")]
    assert operator_filter.verdict(FILTERS, headers)[0] == "discard"


def test_no_match_and_other_headers():
    assert operator_filter.verdict(FILTERS, [("From", "WIN A FREE PRIZE <x@example.net>")]) == ("", None)


def test_malformed_and_unknown_filters_are_skipped():
    parsed = operator_filter.parse_filters(['not json', '{"header": "Subject"}',
                                            '{"header": "Subject", "contains": "x", "action": "folder"}'])
    assert parsed == []


# Robustness (issue 16): no header makes the filter defer a message.

import base64  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from unittest import mock  # noqa: E402

import ispmail_headers  # noqa: E402
from header_strategies import addresses, any_header_value  # noqa: E402
from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from scripts import Milter, run_milter  # noqa: E402

SJIS_SUBJECT = "=?Windows-31J?B?" + base64.b64encode("【未承諾広告】".encode("cp932")).decode() + "?="


class Directory:
    def lookup(self, domain):
        return FILTERS


def run(sender, recipients, headers):
    """One message through the milter (stand-in pymilter); its answer and header changes."""
    with mock.patch.dict(sys.modules, Milter=Milter):
        milter = operator_filter.filter_class(Directory())()
    return run_milter(milter, sender, recipients, headers), getattr(milter, "changes", [])


def test_legacy_japanese_charsets_match_instead_of_deferring():
    for charset in ("Windows-31J", "x-sjis", "unknown-8bit"):
        subject = SJIS_SUBJECT.replace("Windows-31J", charset)
        assert operator_filter.verdict(FILTERS, [("Subject", subject)])[0] == "tag", charset
    answer, changes = run("a@example.net", ["alice@example.com"], [("Subject", SJIS_SUBJECT)])
    assert answer == Milter.ACCEPT
    [(_, name, value)] = changes
    assert value.isascii() and ispmail_headers.header_text(value) == "tag; Subject contains 未承諾広告"


def test_filters_with_values_of_the_wrong_type_are_skipped():
    assert operator_filter.parse_filters(['{"header": "Subject", "contains": 5, "action": "tag"}',
                                          '{"header": null, "contains": "x", "action": "tag"}']) == []


@given(st.lists(st.text(max_size=60) | st.dictionaries(st.sampled_from(["header", "contains", "action"]),
                                                         st.none() | st.integers() | st.text(max_size=5)
                                                         | st.sampled_from(["tag", "hold", "discard"]))
                .map(json.dumps), max_size=4))
@example(['{"header": "Subject", "contains": 5, "action": "tag"}'])
def test_any_ldap_value_parses_without_error(values):
    for item in operator_filter.parse_filters(values):
        operator_filter.verdict([item], [("Subject", "x")])


@given(addresses, st.lists(addresses, min_size=1, max_size=3),
       st.lists(st.tuples(st.sampled_from(["Subject", "X-Mailer", "From", "subject"]), any_header_value),
                max_size=6))
@example("a@example.net", ["alice@example.com"], [("Subject", SJIS_SUBJECT)])
@example("a@example.net", ["alice@example.com"], [("Subject", "=?utf-8?B?A?=")])
def test_no_header_makes_the_filter_defer(sender, recipients, headers):
    headers = [(name, value.decode("latin-1") if isinstance(value, bytes) else value) for name, value in headers]
    answer, _ = run(sender, recipients, headers)
    assert answer in (Milter.ACCEPT, Milter.DISCARD)
