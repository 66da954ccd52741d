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
