"""Header text as the platform's mail helpers read it, whatever the sender's software did.

Used by ispmail-spam-milter, ispmail-operator-filter, ispmail-virus-notice and the Sieve
keyword filter helper. Japanese mail still arrives in charsets under names Python does
not know (Windows-31J, x-sjis), in none at all (unknown-8bit, raw 8-bit bytes), and with
broken encoded words. Nothing here raises: a decoding problem must never defer or lose
a message, so what cannot be read exactly is read as well as it can be.
"""

import binascii
import email.header
import re

# What a label means in real mail, tried in order (the first that reads the bytes without
# error wins). Windows' Shift_JIS (cp932) has characters the standard lacks; ISO-2022-JP
# mail often carries half-width katakana (ext) or JIS X 0212 (-2).
SHIFT_JIS = ("cp932", "shift_jis_2004")
ISO_2022_JP = ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_2004", "iso2022_jp_3")
EUC_JP = ("euc_jp", "euc_jis_2004")
# No label, or one that says nothing: ISO-2022-JP (7-bit, told by its escape sequences),
# else UTF-8, else Shift_JIS (what raw 8-bit Japanese headers are). What none of them
# reads is Latin-1 (LAST_RESORT).
UNLABELLED = ISO_2022_JP + ("utf-8",) + SHIFT_JIS
CHARSETS = {
    **dict.fromkeys(["windows-31j", "cswindows31j", "cp932", "ms932", "ms_kanji", "x-ms-cp932", "x-sjis", "sjis",
                     "shift_jis", "shift-jis", "csshiftjis"], SHIFT_JIS),
    **dict.fromkeys(["iso-2022-jp", "csiso2022jp", "iso-2022-jp-1", "iso-2022-jp-2", "iso-2022-jp-3",
                     "iso-2022-jp-2004"], ISO_2022_JP),
    **dict.fromkeys(["euc-jp", "x-euc-jp", "eucjp", "cseucpkdfmtjapanese"], EUC_JP),
    **dict.fromkeys(["", "unknown-8bit", "x-unknown", "unknown"], UNLABELLED),
}
# Every byte is a Latin-1 character: the last resort loses nothing.
LAST_RESORT = "latin-1"
# =?charset?B|Q?text?= (RFC 2047); the text may hold spaces, as some mailers write it.
ENCODED_WORD = re.compile(rb"=\?([^?\s]*)\?([bBqQ])\?([^?]*)\?=")
FOLD = re.compile(rb"\r?\n(?=[ \t])")
PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def raw(value):
    """The bytes of a header value: str values carry 8-bit bytes as surrogates (surrogateescape)."""
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte became
        return value.encode("utf-8", "surrogatepass")


def decode(data, charset=""):
    """bytes as text in charset (a MIME label, known to Python or not); never raises."""
    label = charset.partition("*")[0].strip().lower()  # RFC 2231 adds *language
    candidates = CHARSETS.get(label, (label,))
    for codec in candidates:
        try:
            return data.decode(codec)
        except (LookupError, ValueError):
            continue
    if candidates is not UNLABELLED:
        try:  # the charset it says, with a few bad bytes: keep what it reads
            return data.decode(candidates[0], "replace")
        except (LookupError, ValueError):
            pass
    return data.decode(LAST_RESORT)


def _payload(encoding, text):
    """The bytes of an encoded word's text, read leniently (bad padding, stray characters)."""
    if encoding in b"bB":
        text = re.sub(rb"[^A-Za-z0-9+/]", b"", text)
        text = text[:len(text) - (len(text) % 4 == 1)]  # a lone last character holds no byte
        return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
    return binascii.a2b_qp(text, header=True)


def header_text(value):
    """A header value (str or bytes) unfolded, RFC 2047 words decoded; never raises.

    Adjacent words in one charset are decoded together (a character may be split between
    them); the white space between encoded words is dropped (RFC 2047 6.2).
    """
    data = FOLD.sub(b"", raw(value))
    pieces, position = [], 0  # [charset or None, bytes]
    for word in ENCODED_WORD.finditer(data):
        between = data[position:word.start()]
        position = word.end()
        if between and not (pieces and pieces[-1][0] is not None and between.isspace()):
            pieces.append([None, between])
        charset = word.group(1).decode(LAST_RESORT)
        payload = _payload(word.group(2), word.group(3))
        if pieces and pieces[-1][0] is not None and pieces[-1][0].lower() == charset.lower():
            pieces[-1][1] += payload
        else:
            pieces.append([charset, payload])
    if data[position:]:
        pieces.append([None, data[position:]])
    return "".join(decode(chunk, charset or "") for charset, chunk in pieces)


def printable(text):
    """text fit for syslog (which refuses surrogates): 8-bit bytes shown as escapes."""
    return raw(text).decode("utf-8", "backslashreplace")


def header_value(text):
    """A value for a header the platform writes: printable ASCII as it is, else RFC 2047
    encoded (UTF-8), so no 8-bit byte or line break of ours goes out in a header."""
    if PRINTABLE_ASCII.fullmatch(text):
        return text
    return email.header.Header(raw(text).decode("utf-8", "replace"), "utf-8").encode()
