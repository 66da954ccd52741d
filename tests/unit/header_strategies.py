"""What arrives in mail headers, as hypothesis strategies: arbitrary bytes (as pymilter and
the email parser hand them on, 8-bit bytes as surrogates), RFC 2047 words in any charset
name, broken encodings, NULs, long and folded values."""

import base64
import binascii

from hypothesis import strategies as st

# Labels seen in Japanese mail (some unknown to Python), and names Python knows that are
# no text charsets at all.
CHARSET_NAMES = ["utf-8", "UTF-8", "iso-2022-jp", "ISO-2022-JP-2", "iso-2022-jp-3", "ISO-2022-JP-2004",
                 "iso-2022-jp-1", "Shift_JIS", "Windows-31J", "x-sjis", "MS_Kanji", "cp932", "EUC-JP",
                 "unknown-8bit", "x-unknown", "us-ascii", "iso-8859-1", "utf-8*ja", "", "base64", "rot13",
                 "undefined", "utf-16", "idna", "hex", "zlib"]
charset_names = st.sampled_from(CHARSET_NAMES) | st.text(
    st.characters(exclude_characters="?", exclude_categories=["Cs", "Zs", "Cc"]), max_size=12)


def as_milter_str(data):
    """Header bytes as pymilter and the email parser hand them on (surrogateescape)."""
    return data.decode("utf-8", "surrogateescape")


@st.composite
def encoded_words(draw):
    """=?charset?B|Q?...?=, well or badly encoded."""
    charset = draw(charset_names)
    payload = draw(st.binary(max_size=40) | st.text(max_size=20).map(lambda t: t.encode("utf-8")))
    kind = draw(st.sampled_from(["B", "Q", "b", "q", "broken"]))
    if kind in "Bb":
        text = base64.b64encode(payload).decode()[:draw(st.integers(0, 60))]
    elif kind in "Qq":
        text = binascii.b2a_qp(payload, header=True).decode("latin-1").replace("?", "=3F").replace(" ", "_")
    else:
        kind, text = draw(st.sampled_from("BQ")), draw(st.text(st.characters(exclude_characters="?"), max_size=20))
    return f"=?{charset}?{kind}?{text}?="


folds = st.sampled_from(["\r\n ", "\n\t", "\n ", " ", "", "\r\n\t"])
pieces = (encoded_words() | st.text(max_size=30) | st.binary(max_size=30).map(as_milter_str)
          | st.sampled_from(["\0", "=?", "?=", "(comment)", '"quoted"', "<a@b>", "\udcff"]))
header_values = (st.lists(st.tuples(folds, pieces), max_size=12).map(lambda parts: "".join(f + p for f, p in parts))
                 | st.binary(max_size=300).map(as_milter_str)
                 | st.text(max_size=3000))
long_values = st.integers(1000, 20000).map(lambda n: "=?Windows-31J?B?" + "gqA" * 3 + "?= " + "x" * n)
any_header_value = header_values | long_values | st.binary(max_size=200)

# Envelope and header addresses, with quotes, comments and odd bytes.
local_parts = st.text(max_size=20) | st.sampled_from(['"john doe"', '"a@b"', "a(comment)", "<x>", "", "\udcfe"])
domains = st.text(max_size=20) | st.sampled_from(["example.com", "EXAMPLE.com", "[192.0.2.1]", "例え.jp", ""])
addresses = st.builds(lambda local, domain, at: f"{local}{at}{domain}", local_parts, domains,
                      st.sampled_from(["@", "", "@@"]))
