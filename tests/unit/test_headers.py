"""Role common's ispmail_headers: header text in any charset, never an exception."""

import base64
import email.header

import ispmail_headers
from header_strategies import any_header_value, charset_names
from hypothesis import example, given
from hypothesis import strategies as st

OFFER = "未承諾広告"


def word(text, charset, codec):
    return f"=?{charset}?B?{base64.b64encode(text.encode(codec)).decode()}?="


def test_charsets_python_does_not_know_by_name():
    for charset in ("Windows-31J", "x-sjis", "MS_Kanji", "Shift_JIS", "cp932"):
        assert ispmail_headers.header_text(word(OFFER, charset, "cp932")) == OFFER, charset
    for charset in ("ISO-2022-JP", "iso-2022-jp-1", "ISO-2022-JP-2", "iso-2022-jp-3", "ISO-2022-JP-2004"):
        assert ispmail_headers.header_text(word(OFFER, charset, "iso2022_jp")) == OFFER, charset
    assert ispmail_headers.header_text(word(OFFER, "EUC-JP", "euc_jp")) == OFFER
    # Windows' extensions (circled digits) under the standard's name.
    assert ispmail_headers.header_text(word("①セール", "Shift_JIS", "cp932")) == "①セール"


def test_unknown_8bit_and_unlabelled_bytes():
    assert ispmail_headers.header_text(word(OFFER, "unknown-8bit", "utf-8")) == OFFER
    assert ispmail_headers.header_text(word(OFFER, "x-unknown", "iso2022_jp")) == OFFER
    assert ispmail_headers.header_text(OFFER.encode("cp932")) == OFFER
    # As pymilter passes raw 8-bit headers: the bytes as surrogates.
    assert ispmail_headers.header_text(OFFER.encode("cp932").decode("utf-8", "surrogateescape")) == OFFER
    assert ispmail_headers.header_text("=?no-such-charset?Q?caf=E9?=") == "café"


def test_encoded_words_join_and_unfold():
    subject = email.header.Header("【" + OFFER + "】" * 30, "iso-2022-jp").encode()
    assert "\n" in subject
    assert ispmail_headers.header_text(subject) == "【" + OFFER + "】" * 30
    assert ispmail_headers.header_text("=?utf-8?q?a?= \r\n =?utf-8?q?b?= c") == "ab c"


def test_broken_encodings_read_as_well_as_they_can():
    assert ispmail_headers.header_text("=?utf-8?B?5pyq5om/6Ku+5bqD5ZGK?=") == OFFER  # no padding
    assert ispmail_headers.header_text("=?utf-8?B?A?=") == ""
    assert ispmail_headers.header_text("=?utf-8?B?5pyq5om/6Ku+5bqD5Z?=").startswith("未承諾広")


def test_headers_the_platform_writes_are_printable_ascii():
    assert ispmail_headers.header_value("tag; Subject contains sale") == "tag; Subject contains sale"
    value = ispmail_headers.header_value(f"tag; Subject contains {OFFER}")
    assert value.isascii() and ispmail_headers.header_text(value) == f"tag; Subject contains {OFFER}"


@given(any_header_value)
@example("=?Windows-31J?B?lqKPs5H4jY2Nkg==?=")
@example("=?x-sjis?Q?=96=A2?=")
@example("=?unknown-8bit?B?gqA=?=")
@example("=?utf-8?B?A?=")
@example("=?base64?Q?abc?=")
@example("=?undefined?Q?abc?=")
@example("=?\udcff?Q?abc?=")
@example("raw \udc96\udca2 \ud800")
@example(b"=?utf-8?q?\xff?= \x00")
def test_any_header_decodes_without_error(value):
    text = ispmail_headers.header_text(value)
    assert isinstance(text, str)
    text.encode("utf-8")  # no surrogates: fit for logs, LDAP and new headers
    ispmail_headers.printable(value).encode("utf-8")


@given(st.binary(max_size=100), charset_names)
@example(b"\x82\xa0", "Windows-31J")
@example(b"abc", "undefined")
@example(b"abc", "base64")
def test_any_bytes_in_any_charset_decode(data, charset):
    assert isinstance(ispmail_headers.decode(data, charset), str)


@given(st.text(max_size=200) | st.binary(max_size=100).map(lambda b: b.decode("utf-8", "surrogateescape")))
def test_headers_the_platform_writes_stay_7bit_and_read_back(text):
    value = ispmail_headers.header_value(text)
    assert value.isascii() and "\0" not in value
    assert all(line[:1] in (" ", "\t") for line in value.splitlines()[1:])  # folded, never a new header
    if text.isprintable() and text.isascii():
        assert value == text
