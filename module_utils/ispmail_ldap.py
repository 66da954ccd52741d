# -*- coding: utf-8 -*-
# Shared code of the mail_user and mail_domain modules: the LDAP connection, input
# validation, password hashing, and the mapping between module options and LDAP
# attributes that both the change computation and the diff output use.

from __future__ import annotations

import hashlib
import hmac
import json
import re
import ssl
import traceback
import warnings
from typing import NamedTuple

with warnings.catch_warnings():
    # crypt is deprecated (gone in Python 3.13) but is the standard library's only
    # SHA-512 crypt, the one scheme both slapd ({CRYPT}) and Dovecot verify.
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import crypt
    except ImportError:
        crypt = None

try:
    import ldap3
    from ldap3.core.exceptions import LDAPException
    from ldap3.utils.conv import escape_filter_chars
    from ldap3.utils.dn import escape_rdn
    LDAP3_IMPORT_ERROR = None
except ImportError:
    LDAP3_IMPORT_ERROR = traceback.format_exc()

CONNECTION_ARGUMENT_SPEC = dict(
    server_uri=dict(type="str", default="ldapi:///"),
    bind_dn=dict(type="str"),
    bind_pw=dict(type="str", no_log=True),
    base_dn=dict(type="str", required=True),
    start_tls=dict(type="bool", default=False),
    ca_file=dict(type="path"),
    validate_certs=dict(type="bool", default=True),
)
CONNECTION_REQUIRED_TOGETHER = [("bind_dn", "bind_pw")]

# ldapi:/// names no socket; ldap3 needs the path, and this is Debian's.
DEFAULT_LDAPI_URI = "ldapi://%2Fvar%2Frun%2Fslapd%2Fldapi"

USER_FILTER_ACTIONS = ("discard", "folder", "tag")
DOMAIN_FILTER_ACTIONS = ("discard", "tag", "hold")

PASSWORD_UNCHANGED = "(set)"
PASSWORD_CHANGED = "(changed)"

RESULT_NO_SUCH_OBJECT = 32
RESULT_SIZE_LIMIT = 4
RESULT_REFERRAL = 10
RESULT_UNWILLING = 53


class IspmailError(Exception):
    """Anything the module reports through fail_json; the text names the field or server."""


# ---------------------------------------------------------------- validation

_LOCAL_PART = re.compile(r"^[a-z0-9_+-]+(\.[a-z0-9_+-]+)*$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# RFC 5322 field name: printable ASCII except the colon.
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")
_QUOTA = re.compile(r"^(\d+)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)
_QUOTA_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def validate_domain(value, field):
    """Return the domain in lower case or raise naming the field."""
    name = value.strip().lower() if isinstance(value, str) else ""
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise IspmailError(f"{field}: {value!r} is not a valid domain name")
    return name


def validate_address(value, field):
    """Return the address in lower case (addresses are case-insensitive here) or raise."""
    address = value.strip().lower() if isinstance(value, str) else ""
    local, at, domain = address.rpartition("@")
    try:
        valid = at and len(local) <= 64 and _LOCAL_PART.match(local) and validate_domain(domain, field)
    except IspmailError:
        valid = False
    if not valid:
        raise IspmailError(f"{field}: {value!r} is not a valid mail address")
    return address


def parse_quota(value, field):
    """Quota as bytes from an integer or '500M', '2G', '1024K' (binary units); 0 = unlimited."""
    if isinstance(value, bool):
        raise IspmailError(f"{field}: {value!r} is not a quota")
    if isinstance(value, int):
        if value < 0:
            raise IspmailError(f"{field}: quota must not be negative")
        return value
    match = _QUOTA.match(str(value).strip())
    if not match:
        raise IspmailError(
            f"{field}: {value!r} is not a quota; use whole bytes or a whole number with K, M, G or T "
            "(binary units), e.g. 500M")
    return int(match.group(1)) * _QUOTA_UNITS[match.group(2).lower()]


def canonical_keyword_filter(item, actions, field):
    """The stored form of one keyword filter: canonical JSON, folder only for action folder."""
    if not isinstance(item, dict):
        raise IspmailError(f"{field}: must be a dict with header, contains and action")
    given = {key: value for key, value in item.items() if value is not None}
    unknown = sorted(set(given) - {"header", "contains", "action", "folder"})
    if unknown:
        raise IspmailError(f"{field}: unknown key(s) {', '.join(unknown)}")
    for key in ("header", "contains", "action"):
        if not isinstance(given.get(key), str) or not given[key]:
            raise IspmailError(f"{field}.{key}: required, a non-empty string")
    if not _HEADER_NAME.match(given["header"]):
        raise IspmailError(f"{field}.header: {given['header']!r} is not a mail header name")
    if given["action"] not in actions:
        raise IspmailError(
            f"{field}.action: unknown action {given['action']!r} (allowed: {', '.join(actions)})")
    obj = {key: given[key] for key in ("header", "contains", "action")}
    if given["action"] == "folder":
        if not given.get("folder"):
            raise IspmailError(f"{field}.folder: required when action is folder")
        obj["folder"] = given["folder"]
    elif "folder" in given:
        raise IspmailError(f"{field}.folder: only valid with action folder")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_keyword_filters(items, actions, field):
    """None stays None (option not given); a list becomes sorted unique canonical values."""
    if items is None:
        return None
    return sorted({canonical_keyword_filter(item, actions, f"{field}[{index}]")
                   for index, item in enumerate(items)})


def merge_item_defaults(item, top_level, keys):
    """Bulk form: a per-item key left unset takes the value given at the top level."""
    return {key: item.get(key) if item.get(key) is not None else top_level.get(key) for key in keys}


def find_duplicates(names):
    seen, duplicates = set(), set()
    for name in names:
        (duplicates if name in seen else seen).add(name)
    return sorted(duplicates)


# ---------------------------------------------------------------- passwords

def _require_crypt():
    if crypt is None:
        raise IspmailError("password: this Python has no crypt module (removed in 3.13); run the module "
                           "with Python 3.12 or older, e.g. Debian 12's python3")


def hash_password(password):
    _require_crypt()
    return "{CRYPT}" + crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


def password_matches(password, stored):
    """True if the stored userPassword is a SHA-512 crypt of password; any other scheme
    counts as a mismatch so that it gets replaced by SHA-512 crypt."""
    if not stored or stored[:7].upper() != "{CRYPT}" or not stored[7:].startswith("$6$"):
        return False
    _require_crypt()
    hashed = stored[7:]
    return hmac.compare_digest(crypt.crypt(password, hashed), hashed)


# Hashes crypt(3) verifies that other systems wrote: MD5-crypt, SHA-crypt, traditional DES.
CRYPT_HASH = re.compile(r"\$1\$[./0-9A-Za-z]{0,8}\$[./0-9A-Za-z]{22}"
                        r"|\$[56]\$(rounds=[0-9]+\$)?[./0-9A-Za-z]{0,16}\$[./0-9A-Za-z]{43,86}"
                        r"|[./0-9A-Za-z]{13}")


def validate_crypt_hash(value, field):
    """'{CRYPT}<hash>' for a crypt(3) hash given with or without the prefix; never echoes it."""
    hashed = value[7:] if value[:7].upper() == "{CRYPT}" else value
    if not CRYPT_HASH.fullmatch(hashed):
        raise IspmailError(f"{field}: not an MD5-crypt ($1$), SHA-crypt ($5$/$6$) or DES crypt hash")
    return "{CRYPT}" + hashed


def pick_mailbox_host(address, hosts):
    """Rendezvous hashing: the same address always gets the same host, and adding a host
    moves only the addresses that the new host wins."""
    return max(sorted(hosts), key=lambda host: hashlib.sha256(f"{host}\n{address}".encode()).digest())


def slots_dn(base_dn):
    """The mailbox take-over map (decision 0010): cn=<n> slot entries, cn=<server> entries."""
    return f"ou=slots,{base_dn}"


def slot_dn(number, base_dn):
    return f"cn={number},{slots_dn(base_dn)}"


def read_slot_homes(conn, base_dn):
    """{home server: sorted slot numbers} of the map; {} when the directory has no map."""
    homes = {}
    for dn, attrs in search_subtree(conn, slots_dn(base_dn), "(objectClass=ispmailMailboxSlot)",
                                    ["cn", "ispmailSlotHome"]):
        home = (attrs.get("ispmailslothome") or [""])[0].lower()
        if home:
            homes.setdefault(home, []).append(int(attrs["cn"][0]))
    return {home: sorted(numbers) for home, numbers in homes.items()}


def pick_slot(address, host, slot_homes, base_dn):
    """DN of the slot that serves address on host: one of the slots whose home is host, the
    same for an address every time; None (the user stays pinned) when host has no slots, as
    a legacy host in a migration or the `moving` marker."""
    numbers = slot_homes.get(host.lower())
    if not numbers:
        return None
    digest = int.from_bytes(hashlib.sha256(address.lower().encode()).digest()[:8], "big")
    return slot_dn(numbers[digest % len(numbers)], base_dn)


def slot_home_of(slot, slot_homes):
    """Home server of a slot DN (None if not in the map)."""
    number = slot.split(",", 1)[0].partition("=")[2]
    for home, numbers in slot_homes.items():
        if number.isdigit() and int(number) in numbers:
            return home
    return None


# ---------------------------------------------------------------- option <-> attribute mapping

class Attr(NamedTuple):
    """An LDAP attribute behind a module option. kind: bool, int, text (case-exact),
    ci (case-insensitive), ci_list (multi-valued, case-insensitive), filters (keyword filters)."""
    name: str
    kind: str


def encode(kind, value):
    """Option value -> LDAP values; None (and []) mean the attribute is absent."""
    if value is None:
        return []
    if kind == "bool":
        return ["TRUE" if value else "FALSE"]
    if kind in ("ci_list", "filters"):
        return list(value)
    return [str(value)]


def decode(kind, values):
    """LDAP values -> the option value shown in entry, diff and results."""
    if kind in ("ci_list", "filters"):
        if kind == "filters":
            return [json.loads(value) for value in sorted(values)]
        return sorted(value.lower() for value in values)
    if not values:
        return None
    if kind == "bool":
        return values[0].upper() == "TRUE"
    if kind == "int":
        return int(values[0])
    return values[0]


def _comparable(kind, values):
    if kind in ("ci", "ci_list", "bool"):
        return {value.lower() for value in values}
    if kind == "int":
        return {int(value) for value in values}
    return set(values)


def attribute_changes(attr_map, current, desired):
    """LDAP replacements that turn current (attribute values by lower-case name) into the
    desired option values. Options missing from desired are not enforced."""
    changes = {}
    for option, value in desired.items():
        attr = attr_map[option]
        new_values = encode(attr.kind, value)
        if _comparable(attr.kind, new_values) != _comparable(attr.kind, current.get(attr.name.lower(), [])):
            changes[attr.name] = new_values
    return changes


def entry_view(attr_map, attrs):
    """The normalised entry: options by name; a dotted option name becomes a nested dict."""
    view = {}
    for option, attr in attr_map.items():
        value = decode(attr.kind, attrs.get(attr.name.lower(), []))
        parent, _, child = option.rpartition(".")
        (view.setdefault(parent, {}) if parent else view)[child] = value
    return view


def apply_to_attrs(attrs, changes):
    """attrs after the changes, for the 'after' side of the diff."""
    after = dict(attrs)
    for name, values in changes.items():
        after[name.lower()] = list(values)
    return after


# ---------------------------------------------------------------- LDAP

def connect(params):
    """An open, bound ldap3 connection; raises IspmailError with the URI on any failure."""
    uri = params["server_uri"]
    if uri.rstrip("/").lower() == "ldapi:":
        uri = DEFAULT_LDAPI_URI
    scheme = uri.partition("://")[0].lower()
    if scheme not in ("ldap", "ldaps", "ldapi"):
        raise IspmailError(f"server_uri: {uri!r} must start with ldap://, ldaps:// or ldapi://")
    if params["bind_dn"] is None and scheme != "ldapi":
        raise IspmailError(
            f"bind_dn: required for {uri}; without it the modules use SASL EXTERNAL, which works "
            "only over ldapi://")
    tls = None
    if scheme == "ldaps" or params["start_tls"]:
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED if params["validate_certs"] else ssl.CERT_NONE,
                        ca_certs_file=params["ca_file"])
    try:
        # ldap3 takes no path in ldap:// and ldaps:// URIs, not even the usual trailing slash.
        server = ldap3.Server(uri if scheme == "ldapi" else uri.rstrip("/"), tls=tls, get_info=ldap3.NONE,
                              connect_timeout=10)
    except LDAPException as exc:
        raise IspmailError(f"server_uri: {uri!r}: {exc}") from exc
    if params["bind_dn"] is None:
        identity = "SASL EXTERNAL"
        conn = ldap3.Connection(server, authentication=ldap3.SASL, sasl_mechanism=ldap3.EXTERNAL, sasl_credentials="",
                                auto_referrals=False, receive_timeout=120)
    else:
        identity = params["bind_dn"]
        conn = ldap3.Connection(server, user=params["bind_dn"], password=params["bind_pw"],
                                auto_referrals=False, receive_timeout=120)
    try:
        conn.open(read_server_info=False)
        if params["start_tls"] and scheme != "ldapi" and not conn.start_tls(read_server_info=False):
            raise IspmailError(f"cannot start TLS with {uri}: {describe_result(conn)}")
        bound = conn.bind(read_server_info=False)
    except LDAPException as exc:
        raise IspmailError(f"cannot connect to {uri}: {exc}") from exc
    if not bound:
        raise IspmailError(f"cannot bind to {uri} as {identity}: {describe_result(conn)}")
    return conn


def describe_result(conn):
    result = conn.result or {}
    text = result.get("description") or "error"
    if result.get("message"):
        text += f" ({result['message']})"
    return text


def dn_of(*rdns_and_base):
    """DN from (attribute, value) RDN pairs followed by the base DN."""
    *rdns, base = rdns_and_base
    return ",".join([f"{name}={escape_rdn(value)}" for name, value in rdns] + [base])


def domains_dn(base_dn):
    return f"ou=domains,{base_dn}"


def domain_dn(domain, base_dn):
    return dn_of(("ou", domain), domains_dn(base_dn))


def equality_filter(attribute, value):
    return f"({attribute}={escape_filter_chars(value)})"


def search_subtree(conn, search_base, ldap_filter, attributes):
    """All entries below search_base (inclusive) as (dn, {lower-case attribute: [str]}),
    read with one paged subtree search; [] if search_base does not exist."""
    entries, cookie = [], None
    while True:
        try:
            conn.search(search_base, ldap_filter, search_scope=ldap3.SUBTREE, attributes=attributes,
                        paged_size=1000, paged_cookie=cookie)
        except LDAPException as exc:
            raise IspmailError(f"search below {search_base} failed: {exc}") from exc
        code = conn.result["result"]
        if code == RESULT_NO_SUCH_OBJECT:
            return []
        if code == RESULT_SIZE_LIMIT:
            raise IspmailError(
                f"search below {search_base} stopped at the server's size limit; give the bind "
                "identity 'size=unlimited' in olcLimits on the provider")
        if code != 0:
            raise IspmailError(f"search below {search_base} failed: {describe_result(conn)}")
        for item in conn.response:
            if item.get("type") == "searchResEntry":
                attrs = {name.lower(): [value.decode("utf-8") for value in values]
                         for name, values in item["raw_attributes"].items()}
                entries.append((item["dn"], attrs))
        cookie = conn.result.get("controls", {}).get("1.2.840.113556.1.4.319", {}).get("value", {}).get("cookie")
        if not cookie:
            return entries


class Write(NamedTuple):
    """One planned LDAP write. op: add (attrs = the entry), modify (attrs = replacements), delete."""
    op: str
    dn: str
    attrs: dict


def apply_writes(conn, writes, uri):
    """Run the writes in order; stop at the first refusal and say what was already done."""
    for done, write in enumerate(writes):
        try:
            if write.op == "add":
                ok = conn.add(write.dn, attributes={k: v for k, v in write.attrs.items() if v})
            elif write.op == "modify":
                ok = conn.modify(write.dn, {name: [(ldap3.MODIFY_REPLACE, values)]
                                            for name, values in write.attrs.items()})
            else:
                ok = conn.delete(write.dn)
        except LDAPException as exc:
            raise IspmailError(f"{write.op} {write.dn} failed: {exc} ({done} earlier writes applied)") from exc
        if ok:
            continue
        code = conn.result["result"]
        if code in (RESULT_REFERRAL, RESULT_UNWILLING):
            where = ", ".join(conn.result.get("referrals") or []) or "the provider"
            raise IspmailError(
                f"{uri} refused to {write.op} {write.dn}: {describe_result(conn)}; this server is a "
                f"read-only replica, writes must go to the provider ({where})")
        raise IspmailError(f"{write.op} {write.dn} failed: {describe_result(conn)} "
                           f"({done} earlier writes applied)")


def run_directory_module(argument_spec, single, bulk, run):
    """Build the module (single form `single`, bulk form `bulk`; None for a module with one
    form), run it, report errors."""
    from ansible.module_utils.basic import AnsibleModule, missing_required_lib

    forms = [(single, bulk)] if single else []
    module = AnsibleModule(
        argument_spec=dict(CONNECTION_ARGUMENT_SPEC, **argument_spec),
        mutually_exclusive=forms,
        required_one_of=forms,
        required_together=CONNECTION_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    if LDAP3_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("ldap3"), exception=LDAP3_IMPORT_ERROR)
    try:
        module.exit_json(**run(module))
    except IspmailError as exc:
        module.fail_json(msg=str(exc))
