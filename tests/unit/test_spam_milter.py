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
