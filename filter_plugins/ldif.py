"""Filters that read LDIF (RFC 2849) as data."""

import base64
import binascii

from ansible.errors import AnsibleFilterError


def _logical_lines(text):
    """Unfold the physical lines: one that starts with a space continues the one before."""
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(" "):
            if not lines or not lines[-1][1]:
                raise AnsibleFilterError(f"LDIF line {number} continues nothing")
            lines[-1][1] += line[1:]
        else:
            lines.append([number, line])
    return lines


def ldif_attributes(text, attributes=None):
    """The attribute values of the one entry of an LDIF text, as {name: [values]}.

    Folded lines are unfolded, comments, `version:` and `dn:` are skipped, base64
    values (`name:: ...`) are decoded. Values keep their text otherwise: slapd stores
    schema definitions as given, so they compare byte for byte with what it returns.
    `attributes`, a list of names, narrows the result to those, each of which must
    be in the entry.
    """
    if not isinstance(text, str):
        raise AnsibleFilterError("ldif_attributes needs the LDIF as a string")
    values = {}
    seen_entry = ended = False
    for number, line in _logical_lines(text):
        if not line:
            ended = seen_entry
            continue
        if line.startswith("#"):
            continue
        if ended:
            raise AnsibleFilterError(f"LDIF line {number}: a second entry (ldif_attributes reads one)")
        name, sep, value = line.partition(":")
        if not sep or not name:
            raise AnsibleFilterError(f"LDIF line {number}: expected 'attribute: value'")
        if name.lower() == "version" and not seen_entry:
            continue
        if name.lower() == "changetype":
            raise AnsibleFilterError(f"LDIF line {number}: a change record, not an entry")
        if value.startswith(":"):
            try:
                value = base64.b64decode(value[1:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise AnsibleFilterError(f"LDIF line {number}: {name} is not base64 of UTF-8 text")
        elif value.startswith("<"):
            raise AnsibleFilterError(f"LDIF line {number}: {name} refers to a URL, which is not read")
        else:
            value = value.lstrip(" ")
        seen_entry = True
        if name.lower() != "dn":
            values.setdefault(name, []).append(value)
    if attributes is None:
        return values
    missing = [name for name in attributes if name not in values]
    if missing:
        raise AnsibleFilterError(f"the LDIF entry has no {', '.join(missing)}")
    return {name: values[name] for name in attributes}


class FilterModule:
    def filters(self):
        return {"ldif_attributes": ldif_attributes}
