"""Pure unit tests of module_utils/ispmail_ldap.py and the modules' planning (no LDAP server)."""

import json
import warnings
from pathlib import Path

import pytest

# The modules import their shared code as ansible.module_utils.ispmail_ldap, as on a target.
import ansible.module_utils

MODULE_UTILS = str(Path(__file__).resolve().parent.parent.parent / "module_utils")
if MODULE_UTILS not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(MODULE_UTILS)

from ansible.module_utils import basic  # noqa: E402
from ansible.module_utils.ispmail_ldap import (  # noqa: E402
    DOMAIN_FILTER_ACTIONS, USER_FILTER_ACTIONS, Attr, IspmailError, attribute_changes,
    canonical_keyword_filter, canonical_keyword_filters, entry_view, hash_password, merge_item_defaults,
    parse_quota, password_matches, pick_mailbox_host, validate_address, validate_domain)
from ansible.module_utils.testing import patch_module_args  # noqa: E402

import mail_domain  # noqa: E402
import mail_user  # noqa: E402

UNREACHABLE = dict(server_uri="ldap://127.0.0.1:1/", bind_dn="cn=admin,dc=ispmail,dc=test", bind_pw="x",
                   base_dn="dc=ispmail,dc=test")


class AnsibleExitJson(Exception):
    pass


class AnsibleFailJson(Exception):
    pass


@pytest.fixture
def module_exits(monkeypatch):
    def exit_json(self, **kwargs):
        raise AnsibleExitJson(kwargs)

    def fail_json(self, msg, **kwargs):
        raise AnsibleFailJson(msg)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)


def fail_message(module, args):
    with patch_module_args(args), pytest.raises(AnsibleFailJson) as failure:
        module.main()
    return str(failure.value)


# ---------------------------------------------------------------- passwords

def test_hash_is_sha512_crypt_and_verifies():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stored = hash_password("s3cret")
    assert stored.startswith("{CRYPT}$6$")
    assert password_matches("s3cret", stored)
    assert not password_matches("S3cret", stored)
    assert hash_password("s3cret") != stored  # fresh salt every time


@pytest.mark.parametrize("stored", [None, "", "s3cret", "{SSHA}abcdef", "{CRYPT}$1$salt$hash", "{crypt}garbage"])
def test_other_schemes_do_not_match_so_they_get_rehashed(stored):
    assert not password_matches("s3cret", stored)


def test_crypt_prefix_is_case_insensitive():
    assert password_matches("pw", "{crypt}" + hash_password("pw")[7:])


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("value, expected", [
    ("0", 0), (0, 0), ("1024", 1024), ("1024K", 1024 ** 2), ("500M", 500 * 1024 ** 2), ("2G", 2 * 1024 ** 3),
    ("2g", 2 * 1024 ** 3), ("1T", 1024 ** 4), ("500MB", 500 * 1024 ** 2), ("500MiB", 500 * 1024 ** 2), (" 5 M ", 5 * 1024 ** 2),
])
def test_quota(value, expected):
    assert parse_quota(value, "quota") == expected


@pytest.mark.parametrize("value", ["", "1.5G", "-1", -1, "10X", "G", "lots", True])
def test_bad_quota_names_the_field(value):
    with pytest.raises(IspmailError, match=r"^users\[2\]\.quota: "):
        parse_quota(value, "users[2].quota")


@pytest.mark.parametrize("value, expected", [
    ("Alice@Example.COM", "alice@example.com"), ("a.b+tag@mail.example.jp", "a.b+tag@mail.example.jp"),
    (" x_y-z@xn--wgv71a.jp ", "x_y-z@xn--wgv71a.jp"),
])
def test_addresses_are_lower_cased(value, expected):
    assert validate_address(value, "address") == expected


@pytest.mark.parametrize("value", ["alice", "@example.com", "alice@", "alice@localhost", "a..b@example.com",
                                   ".a@example.com", "a b@example.com", "a@exa_mple.com", "a@-x.com", "a,b@x.com", None])
def test_bad_addresses(value):
    with pytest.raises(IspmailError, match="^address: .* is not a valid mail address"):
        validate_address(value, "address")


def test_bad_domain():
    with pytest.raises(IspmailError, match="^name: 'example' is not a valid domain name"):
        validate_domain("example", "name")


# ---------------------------------------------------------------- keyword filters

def test_filter_is_canonical_json_with_utf8():
    value = canonical_keyword_filter({"action": "tag", "header": "Subject", "contains": "未承諾広告", "folder": None},
                                     USER_FILTER_ACTIONS, "f")
    assert value == '{"action":"tag","contains":"未承諾広告","header":"Subject"}'


def test_folder_kept_only_for_action_folder():
    value = canonical_keyword_filter({"header": "From", "contains": "boss", "action": "folder", "folder": "Boss"},
                                     USER_FILTER_ACTIONS, "f")
    assert json.loads(value) == {"header": "From", "contains": "boss", "action": "folder", "folder": "Boss"}
    with pytest.raises(IspmailError, match=r"^f\.folder: required when action is folder"):
        canonical_keyword_filter({"header": "From", "contains": "x", "action": "folder"}, USER_FILTER_ACTIONS, "f")
    with pytest.raises(IspmailError, match=r"^f\.folder: only valid with action folder"):
        canonical_keyword_filter({"header": "From", "contains": "x", "action": "tag", "folder": "X"},
                                 USER_FILTER_ACTIONS, "f")


@pytest.mark.parametrize("actions, action", [(USER_FILTER_ACTIONS, "hold"), (DOMAIN_FILTER_ACTIONS, "folder"),
                                             (USER_FILTER_ACTIONS, "bounce")])
def test_unknown_action(actions, action):
    with pytest.raises(IspmailError, match=rf"^kf\[0\]\.action: unknown action '{action}' \(allowed: "):
        canonical_keyword_filters([{"header": "Subject", "contains": "x", "action": action}], actions, "kf")


@pytest.mark.parametrize("item, message", [
    ({"header": "", "contains": "x", "action": "tag"}, r"f\.header: required"),
    ({"header": "Sub ject", "contains": "x", "action": "tag"}, r"f\.header: 'Sub ject' is not a mail header"),
    ({"header": "Subject", "action": "tag"}, r"f\.contains: required"),
    ({"header": "Subject", "contains": "x", "action": "tag", "colour": "red"}, r"f: unknown key\(s\) colour"),
    ("Subject contains x", r"f: must be a dict"),
])
def test_malformed_filters(item, message):
    with pytest.raises(IspmailError, match=message):
        canonical_keyword_filter(item, USER_FILTER_ACTIONS, "f")


def test_filter_lists_are_sorted_and_deduplicated():
    tag = {"header": "Subject", "contains": "b", "action": "tag"}
    discard = {"header": "Subject", "contains": "a", "action": "discard"}
    assert canonical_keyword_filters([tag, discard, tag], USER_FILTER_ACTIONS, "kf") == [
        '{"action":"discard","contains":"a","header":"Subject"}', '{"action":"tag","contains":"b","header":"Subject"}']
    assert canonical_keyword_filters(None, USER_FILTER_ACTIONS, "kf") is None
    assert canonical_keyword_filters([], USER_FILTER_ACTIONS, "kf") == []


# ---------------------------------------------------------------- diff logic

ATTRS = {"enabled": Attr("ispmailEnabled", "bool"), "host": Attr("ispmailMailboxHost", "ci"),
         "quota": Attr("ispmailQuota", "int"), "forward_to": Attr("ispmailForwardTo", "ci_list"),
         "notice.subject": Attr("ispmailVirusNoticeSubject", "text")}
CURRENT = {"ispmailenabled": ["TRUE"], "ispmailmailboxhost": ["MBOX01"], "ispmailquota": ["1024"],
           "ispmailforwardto": ["B@x.test", "a@x.test"], "ispmailvirusnoticesubject": ["Virus"]}


def test_equal_values_in_other_spelling_are_no_change():
    desired = {"enabled": True, "host": "mbox01", "quota": 1024, "forward_to": ["a@x.test", "b@x.test"],
               "notice.subject": "Virus"}
    assert attribute_changes(ATTRS, CURRENT, desired) == {}


def test_only_given_options_are_compared_and_none_removes():
    changes = attribute_changes(ATTRS, CURRENT, {"enabled": False, "forward_to": [], "notice.subject": "virus"})
    assert changes == {"ispmailEnabled": ["FALSE"], "ispmailForwardTo": [], "ispmailVirusNoticeSubject": ["virus"]}
    assert attribute_changes(ATTRS, CURRENT, {"quota": None}) == {"ispmailQuota": []}
    assert attribute_changes(ATTRS, {}, {"quota": None}) == {}


def test_entry_view_decodes_and_nests():
    assert entry_view(ATTRS, CURRENT) == {"enabled": True, "host": "MBOX01", "quota": 1024,
                                          "forward_to": ["a@x.test", "b@x.test"], "notice": {"subject": "Virus"}}
    assert entry_view(ATTRS, {}) == {"enabled": None, "host": None, "quota": None, "forward_to": [],
                                     "notice": {"subject": None}}


def test_merge_item_defaults_fills_only_unset_keys():
    merged = merge_item_defaults({"address": "a@x.test", "enabled": None, "quota": "1G"},
                                 {"enabled": True, "quota": "5G", "state": "present"}, ("address", "enabled", "quota", "state"))
    assert merged == {"address": "a@x.test", "enabled": True, "quota": "1G", "state": "present"}


# ---------------------------------------------------------------- mailbox host pinning

def test_rendezvous_is_deterministic_and_order_independent():
    hosts = ["mbox01", "mbox02", "mbox03", "mbox04"]
    assert pick_mailbox_host("a@x.test", hosts) == pick_mailbox_host("a@x.test", list(reversed(hosts)))


def test_rendezvous_spreads_and_a_new_host_only_takes_users():
    hosts = ["mbox01", "mbox02", "mbox03"]
    addresses = [f"user{n}@x.test" for n in range(3000)]
    before = {address: pick_mailbox_host(address, hosts) for address in addresses}
    assert all(list(before.values()).count(host) > 800 for host in hosts)
    after = {address: pick_mailbox_host(address, hosts + ["mbox04"]) for address in addresses}
    assert {after[a] for a in addresses if after[a] != before[a]} == {"mbox04"}


# ---------------------------------------------------------------- planning (mail_user)

def user_item(**given):
    return dict(dict.fromkeys(mail_user.PER_USER_KEYS), update_password="always", state="present", **given)


DOMAINS = {"x.test": "ou=x.test,ou=domains,dc=ispmail,dc=test"}


def test_plan_create_applies_defaults_and_hides_password():
    user = mail_user.normalise_user(user_item(address="New@X.test", password="pw", quota="1M"), "")
    write, dn, before, after = mail_user.plan_user(user, None, DOMAINS, ["mbox01", "mbox02"], "")
    assert write.op == "add" and dn == "mail=new@x.test,ou=x.test,ou=domains,dc=ispmail,dc=test"
    assert write.attrs["ispmailEnabled"] == ["TRUE"] and write.attrs["ispmailQuota"] == ["1048576"]
    assert write.attrs["ispmailMailboxHost"] == [pick_mailbox_host("new@x.test", ["mbox01", "mbox02"])]
    assert not write.attrs.get("ispmailSpamCheck")  # unset: not written, domain default applies
    assert before == {} and after["password"] == "(changed)" and "pw" not in json.dumps(after)


def test_plan_modify_only_what_differs():
    stored = hash_password("pw")
    current = ("mail=old@x.test,ou=x.test,ou=domains,dc=ispmail,dc=test",
               {"mail": ["old@x.test"], "ispmailenabled": ["TRUE"], "ispmailquota": ["0"],
                "ispmailspamcheck": ["TRUE"], "userpassword": [stored]})
    same = mail_user.normalise_user(user_item(address="old@x.test", password="pw", quota="0", spam_check=True), "")
    assert mail_user.plan_user(same, current, DOMAINS, None, "")[0] is None

    other = mail_user.normalise_user(user_item(address="old@x.test", password="new"), "")
    write, _, before, after = mail_user.plan_user(other, current, DOMAINS, None, "")
    assert set(write.attrs) == {"userPassword"}  # the unset contract is kept
    assert before["password"] == "(set)" and after["password"] == "(changed)"
    assert before["spam_check"] is True and after["spam_check"] is True

    write, _, _, after = mail_user.plan_user(other, current, DOMAINS, None, "", unset_checks="domain_default")
    assert set(write.attrs) == {"ispmailSpamCheck", "userPassword"} and write.attrs["ispmailSpamCheck"] == []
    assert after["spam_check"] is None


def test_plan_create_in_unknown_domain_fails():
    user = mail_user.normalise_user(user_item(address="a@y.test", mailbox_host="mbox01"), "users[0].")
    with pytest.raises(IspmailError, match=r"^users\[0\]\.address: domain y\.test of a@y\.test does not exist"):
        mail_user.plan_user(user, None, DOMAINS, None, "users[0].")


BASE = "dc=ispmail,dc=test"
SLOT_HOMES = {"mbox01": [0, 2, 4], "mbox02": [1, 3]}


def slot_number(dn):
    return int(dn.split(",")[0].split("=")[1])


def test_plan_create_gives_a_slot_of_the_users_server():
    for address in (f"u{i}@x.test" for i in range(40)):
        user = mail_user.normalise_user(user_item(address=address, mailbox_host="mbox02"), "")
        write = mail_user.plan_user(user, None, DOMAINS, None, "", slot_homes=SLOT_HOMES, base_dn=BASE)[0]
        (slot,) = write.attrs["ispmailMailboxSlot"]
        assert slot.endswith(",ou=slots,dc=ispmail,dc=test") and slot_number(slot) in SLOT_HOMES["mbox02"]
    # A legacy host has no slots: pinned, no slot; and a directory without the map: none either.
    legacy = mail_user.normalise_user(user_item(address="a@x.test", mailbox_host="legacy1"), "")
    assert not mail_user.plan_user(legacy, None, DOMAINS, None, "", slot_homes=SLOT_HOMES,
                                   base_dn=BASE)[0].attrs.get("ispmailMailboxSlot")
    assert not mail_user.plan_user(legacy, None, DOMAINS, None, "", slot_homes={},
                                   base_dn=BASE)[0].attrs.get("ispmailMailboxSlot")


def test_plan_keeps_the_slot_converts_and_follows_a_move():
    dn = "mail=a@x.test,ou=x.test,ou=domains,dc=ispmail,dc=test"
    attrs = {"mail": ["a@x.test"], "ispmailenabled": ["TRUE"], "ispmailmailboxhost": ["mbox01"]}
    same = mail_user.normalise_user(user_item(address="a@x.test"), "")
    # An existing user without a slot gets one of its server's (converted without moving).
    write = mail_user.plan_user(same, (dn, attrs), DOMAINS, None, "", slot_homes=SLOT_HOMES, base_dn=BASE)[0]
    assert set(write.attrs) == {"ispmailMailboxSlot"}
    assert slot_number(write.attrs["ispmailMailboxSlot"][0]) in SLOT_HOMES["mbox01"]
    # A slot of its server is kept, even one the hash would not pick (stable for ever).
    held = dict(attrs, ispmailmailboxslot=["CN=4,ou=slots,dc=ispmail,dc=test"])
    assert mail_user.plan_user(same, (dn, held), DOMAINS, None, "", slot_homes=SLOT_HOMES, base_dn=BASE)[0] is None
    # A move: the hold (no slots at "moving") drops the slot, the flip gives one of the target.
    hold = mail_user.normalise_user(user_item(address="a@x.test", mailbox_host="moving"), "")
    write = mail_user.plan_user(hold, (dn, held), DOMAINS, None, "", slot_homes=SLOT_HOMES, base_dn=BASE)[0]
    assert write.attrs == {"ispmailMailboxHost": ["moving"], "ispmailMailboxSlot": []}
    flip = mail_user.normalise_user(user_item(address="a@x.test", mailbox_host="mbox02"), "")
    write = mail_user.plan_user(flip, (dn, held), DOMAINS, None, "", slot_homes=SLOT_HOMES, base_dn=BASE)[0]
    assert slot_number(write.attrs["ispmailMailboxSlot"][0]) in SLOT_HOMES["mbox02"]


# ---------------------------------------------------------------- argument failures, before any LDAP

@pytest.mark.parametrize("args, message", [
    (dict(UNREACHABLE), "one of the following is required: address, users"),
    (dict(UNREACHABLE, address="a@x.test", users=[]), "mutually exclusive: address|users"),
    (dict(UNREACHABLE, address="a@x.test", quota="2X"), "quota: '2X' is not a quota"),
    (dict(UNREACHABLE, users=[{"address": "a@x.test"}, {"address": "bad"}]), "users[1].address: 'bad'"),
    (dict(UNREACHABLE, users=[{"address": "a@x.test"}, {"address": "A@x.test"}]), "listed more than once: a@x.test"),
    (dict(UNREACHABLE, users=[{"address": "a@x.test", "colour": "red"}]), "colour"),
    ({key: value for key, value in UNREACHABLE.items() if key != "bind_pw"} | dict(address="a@x.test"),
     "parameters are required together: bind_dn, bind_pw"),
    (dict(UNREACHABLE, address="a@x.test"), "cannot connect to ldap://127.0.0.1:1/"),
    (dict(UNREACHABLE, address="a@x.test", server_uri="http://x/"), "server_uri: 'http://x/' must start with"),
])
def test_mail_user_argument_failures(module_exits, args, message):
    assert message in fail_message(mail_user, args)


@pytest.mark.parametrize("args, message", [
    (dict(UNREACHABLE, name="x.test", migration={"state": "finished"}), "migration"),
    (dict(UNREACHABLE, name="x.test", keyword_filters=[{"header": "S", "contains": "x", "action": "tag", "folder": "F"}]),
     "folder"),
    (dict(UNREACHABLE, name="x.test", virus_notice={"from": "nobody"}), "virus_notice.from: 'nobody'"),
    (dict(UNREACHABLE, domains=[{"name": "x.test"}, {"name": "x_y"}]), "domains[1].name"),
])
def test_mail_domain_argument_failures(module_exits, args, message):
    assert message in fail_message(mail_domain, args)


@pytest.mark.skipif(Path("/var/run/slapd/ldapi").exists(), reason="a local slapd is running")
def test_default_server_uri_is_debians_ldapi_socket(module_exits):
    message = fail_message(mail_user, dict(base_dn="dc=ispmail,dc=test", address="a@x.test"))
    assert message.startswith("cannot connect to ldapi://%2Fvar%2Frun%2Fslapd%2Fldapi: ")
