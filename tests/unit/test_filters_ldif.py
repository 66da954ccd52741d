from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

from ldif import ldif_attributes

SCHEMA = Path(__file__).resolve().parent.parent.parent / "roles" / "ldap" / "files" / "ispmail.ldif"


def test_folded_values_are_joined_without_the_leading_space():
    text = ("# a comment\n#  continued\ndn: cn=x,cn=schema,cn=config\ncn: x\n"
            "olcObjectClasses: ( 1.2 NAME 'a'\n  MAY ( b $\n        c ) )\n")
    assert ldif_attributes(text) == {"cn": ["x"], "olcObjectClasses": ["( 1.2 NAME 'a' MAY ( b $       c ) )"]}


def test_values_keep_their_order_and_base64_is_decoded():
    text = "version: 1\ndn: cn=x\ndescription:: w6kgdW5k\ndescription: second\n\n"
    assert ldif_attributes(text, ["description"]) == {"description": ["\u00e9 und", "second"]}


def test_the_platform_schema_in_the_form_slapd_returns():
    schema = ldif_attributes(SCHEMA.read_text(), ["olcAttributeTypes", "olcObjectClasses"])
    assert len(schema["olcObjectClasses"]) == 4
    assert schema["olcAttributeTypes"][0] == (
        "( 1.3.6.1.4.1.32473.1.1.1 NAME 'ispmailMailboxHost' DESC 'Mailbox server that serves this user "
        "(IMAP, POP3, LMTP)' EQUALITY caseIgnoreIA5Match SUBSTR caseIgnoreIA5SubstringsMatch "
        "SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )")
    assert all("\n" not in v for v in schema["olcAttributeTypes"] + schema["olcObjectClasses"])


@pytest.mark.parametrize("text, message", [
    ("dn: cn=a\ncn: a\n\ndn: cn=b\ncn: b\n", "second entry"),
    ("dn: cn=a\nchangetype: modify\n", "change record"),
    (" folded\n", "continues nothing"),
    ("dn: cn=a\nno colon\n", "attribute: value"),
    ("dn: cn=a\njpegPhoto:< file:///x\n", "URL"),
    ("dn: cn=a\ncn:: !!!\n", "base64"),
])
def test_bad_ldif(text, message):
    with pytest.raises(AnsibleFilterError, match=message):
        ldif_attributes(text)


def test_missing_attribute_is_named():
    with pytest.raises(AnsibleFilterError, match="no olcObjectClasses"):
        ldif_attributes("dn: cn=a\ncn: a\n", ["cn", "olcObjectClasses"])


def test_text_is_required():
    with pytest.raises(AnsibleFilterError, match="as a string"):
        ldif_attributes(None)
