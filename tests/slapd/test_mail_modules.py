"""mail_user and mail_domain against the real slapd of conftest.py (no LDAP mocks)."""

import json
import subprocess
import warnings

import ldap3
import pytest

import mail_domain
import mail_slots
import mail_user
from ansible.module_utils.ispmail_ldap import pick_mailbox_host

PASSWORD = "correct horse battery staple"


@pytest.fixture
def ldapi(slapd):
    """Connection options of production: SASL EXTERNAL over ldapi as the local user."""
    return dict(server_uri=slapd.ldapi_uri, base_dn=slapd.base_dn)


@pytest.fixture
def ldap_root(slapd):
    """Connection options for a simple bind over ldap:// as the rootDN."""
    return dict(server_uri=slapd.ldap_uri, base_dn=slapd.base_dn, bind_dn=slapd.root_dn, bind_pw=slapd.root_pw)


def read_entry(slapd, dn):
    conn = ldap3.Connection(slapd.ldap_uri.rstrip("/"), slapd.root_dn, slapd.root_pw, auto_bind=True)
    conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["*"])
    entries = [{name.lower(): [value.decode() for value in values] for name, values in item["raw_attributes"].items()}
               for item in conn.response if item["type"] == "searchResEntry"]
    conn.unbind()
    return entries[0] if entries else None


def user_dn(slapd, address):
    return f"mail={address},ou={address.split('@')[1]},ou=domains,{slapd.base_dn}"


def binds(slapd, address, password):
    return subprocess.run(["ldapwhoami", "-x", "-H", slapd.ldap_uri, "-D", user_dn(slapd, address), "-w", password],
                          capture_output=True).returncode == 0


def make_domain(run_module, ldapi, name):
    result = run_module(mail_domain, name=name, **ldapi)
    assert not result.get("failed"), result


def test_domain_create_roundtrip_and_idempotence(run_module, ldapi, slapd):
    args = dict(ldapi, name="Example.JP", virus_check=True,
                virus_notice={"from": "postmaster@example.jp", "subject": "ウイルスを検出しました",
                              "body": "添付ファイルからウイルスが検出されました。\n削除しました。", "notify_sender": False},
                keyword_filters=[{"header": "Subject", "contains": "未承諾広告", "action": "tag"},
                                 {"header": "X-Spam-Flag", "contains": "YES", "action": "hold"}],
                migration={"state": "syncing", "legacy_host": "qmail01.example.net"})
    first = run_module(mail_domain, diff=True, **args)
    assert not first.get("failed"), first
    assert first["changed"] and first["dn"] == f"ou=example.jp,ou=domains,{slapd.base_dn}"
    assert first["diff"]["before"] == {}
    entry = first["entry"]
    assert entry["name"] == "example.jp" and entry["spam_check"] is False and entry["virus_check"] is True
    assert entry["virus_notice"]["subject"] == "ウイルスを検出しました"
    assert entry["migration"] == {"state": "syncing", "legacy_host": "qmail01.example.net"}

    stored = read_entry(slapd, first["dn"])
    assert stored["ispmailvirusnoticebody"] == ["添付ファイルからウイルスが検出されました。\n削除しました。"]
    assert stored["ispmailspamcheck"] == ["FALSE"]
    assert sorted(stored["ispmailkeywordfilter"]) == [
        '{"action":"hold","contains":"YES","header":"X-Spam-Flag"}',
        '{"action":"tag","contains":"未承諾広告","header":"Subject"}']

    again = run_module(mail_domain, **args)
    assert again["changed"] is False and again["entry"] == entry

    # Only the options given are enforced; the rest stays.
    moved = run_module(mail_domain, diff=True, name="example.jp", migration={"state": "cutover"}, **ldapi)
    assert moved["changed"] and moved["entry"]["migration"]["legacy_host"] == "qmail01.example.net"
    assert moved["diff"]["before"]["migration"]["state"] == "syncing"
    assert moved["diff"]["after"]["migration"]["state"] == "cutover"
    assert moved["entry"]["virus_notice"] == entry["virus_notice"]


def test_user_create_bind_and_idempotence(run_module, ldapi, slapd):
    make_domain(run_module, ldapi, "bind.test")
    args = dict(ldapi, address="Alice@Bind.Test", password=PASSWORD, quota="2G", mailbox_host="mbox01",
                forward_to=["alice@elsewhere.test"], keep_copy=True,
                keyword_filters=[{"header": "Subject", "contains": "[SPAM]", "action": "folder", "folder": "Junk"}])
    created = run_module(mail_user, diff=True, **args)
    assert created["changed"] and created["dn"] == user_dn(slapd, "alice@bind.test")
    assert created["entry"] == {
        "address": "alice@bind.test", "enabled": True, "mailbox_host": "mbox01", "quota": 2 * 1024 ** 3,
        "forward_to": ["alice@elsewhere.test"], "keep_copy": True, "spam_check": None, "virus_check": None,
        "keyword_filters": [{"action": "folder", "contains": "[SPAM]", "folder": "Junk", "header": "Subject"}],
        "mailbox_slot": None}  # no take-over map in this base
    assert created["diff"]["after"]["password"] == "(changed)"
    assert PASSWORD not in json.dumps(created) and "$6$" not in json.dumps(created)

    stored = read_entry(slapd, created["dn"])
    assert stored["userpassword"][0].startswith("{CRYPT}$6$")
    assert stored["cn"] == ["alice@bind.test"] and stored["sn"] == ["alice"] and stored["uid"] == ["alice@bind.test"]
    assert binds(slapd, "alice@bind.test", PASSWORD)
    assert not binds(slapd, "alice@bind.test", "wrong password")

    again = run_module(mail_user, diff=True, **args)
    assert again["changed"] is False
    assert again["diff"]["before"]["password"] == again["diff"]["after"]["password"] == "(set)"
    assert read_entry(slapd, created["dn"])["userpassword"] == stored["userpassword"]

    on_create = run_module(mail_user, address="alice@bind.test", password="other", update_password="on_create", **ldapi)
    assert on_create["changed"] is False

    changed = run_module(mail_user, diff=True, address="alice@bind.test", password="new secret", **ldapi)
    assert changed["changed"] and changed["diff"]["after"]["password"] == "(changed)"
    assert binds(slapd, "alice@bind.test", "new secret") and not binds(slapd, "alice@bind.test", PASSWORD)


def test_user_omitted_options_kept_and_contracts_follow_unset_checks(run_module, ldapi, slapd):
    make_domain(run_module, ldapi, "keep.test")
    run_module(mail_user, address="bob@keep.test", mailbox_host="mbox02", quota="500M", spam_check=True,
               forward_to=["x@keep.test"], enabled=False, **ldapi)
    result = run_module(mail_user, address="bob@keep.test", keep_copy=False, **ldapi)
    entry = result["entry"]
    assert result["changed"]
    assert entry["quota"] == 500 * 1024 ** 2 and entry["forward_to"] == ["x@keep.test"] and entry["enabled"] is False
    assert entry["spam_check"] is True  # unset keeps the contract (a move must not change it)
    defaulted = run_module(mail_user, address="bob@keep.test", unset_checks="domain_default", **ldapi)
    assert defaulted["changed"] and defaulted["entry"]["spam_check"] is None  # back to the domain default
    cleared = run_module(mail_user, address="bob@keep.test", forward_to=[], keyword_filters=[], quota=0, **ldapi)
    assert cleared["entry"]["forward_to"] == [] and cleared["entry"]["quota"] == 0


def test_mailbox_host_is_hashed_on_create_then_stable(run_module, ldapi):
    make_domain(run_module, ldapi, "pin.test")
    hosts = ["mbox01", "mbox02", "mbox03", "mbox04"]
    created = run_module(mail_user, address="carol@pin.test", mailbox_hosts=hosts, **ldapi)
    pinned = created["entry"]["mailbox_host"]
    assert pinned in hosts
    others = [host for host in hosts if host != pinned]
    again = run_module(mail_user, address="carol@pin.test", mailbox_hosts=others, **ldapi)
    assert again["changed"] is False and again["entry"]["mailbox_host"] == pinned
    moved = run_module(mail_user, address="carol@pin.test", mailbox_host=others[0], **ldapi)
    assert moved["changed"] and moved["entry"]["mailbox_host"] == others[0]


def test_check_mode_writes_nothing(run_module, ldapi, slapd):
    make_domain(run_module, ldapi, "check.test")
    result = run_module(mail_user, check=True, diff=True, address="dave@check.test", password=PASSWORD,
                        mailbox_host="mbox01", **ldapi)
    assert result["changed"] and result["diff"]["after"]["address"] == "dave@check.test"
    assert read_entry(slapd, user_dn(slapd, "dave@check.test")) is None
    domain = run_module(mail_domain, check=True, name="check.test", state="absent", **ldapi)
    assert domain["changed"] and read_entry(slapd, f"ou=check.test,ou=domains,{slapd.base_dn}")


def test_bulk_users(run_module, ldapi, slapd):
    run_module(mail_domain, domains=[{"name": "bulk1.test"}, {"name": "bulk2.test", "spam_check": True}], **ldapi)
    users = [{"address": f"user{n}@bulk{n % 2 + 1}.test", "password": f"pw{n}", "quota": "1G"} for n in range(6)]
    first = run_module(mail_user, users=users, mailbox_hosts=["mbox01", "mbox02"], **ldapi)
    assert first["changed"] and first["summary"]["created"] == 6
    assert binds(slapd, "user3@bulk2.test", "pw3")

    second = run_module(mail_user, users=users, mailbox_hosts=["mbox01", "mbox02"], **ldapi)
    assert second["changed"] is False
    assert second["summary"] == {"created": 0, "updated": 0, "removed": 0, "unchanged": 6, "changed_addresses": []}

    users[1]["quota"] = "2G"
    users[2] = {"address": users[2]["address"], "state": "absent"}
    third = run_module(mail_user, diff=True, users=users, enabled=True, **ldapi)  # top-level enabled applies to all
    assert third["summary"] == {"created": 0, "updated": 1, "removed": 1, "unchanged": 4,
                                "changed_addresses": ["user1@bulk2.test", "user2@bulk1.test"]}
    assert third["diff"]["after"]["user2@bulk1.test"] == {}
    assert third["diff"]["after"]["user1@bulk2.test"]["quota"] == 2 * 1024 ** 3
    assert read_entry(slapd, user_dn(slapd, "user2@bulk1.test")) is None


def test_bulk_validates_everything_before_writing(run_module, ldapi, slapd):
    make_domain(run_module, ldapi, "atomic.test")
    users = [{"address": "ok@atomic.test", "mailbox_host": "mbox01"},
             {"address": "late@missing-domain.test", "mailbox_host": "mbox01"}]
    result = run_module(mail_user, users=users, **ldapi)
    assert result["failed"] and "users[1].address" in result["msg"] and "missing-domain.test" in result["msg"]
    assert read_entry(slapd, user_dn(slapd, "ok@atomic.test")) is None

    users[1] = {"address": "bad@atomic.test", "quota": "lots"}
    result = run_module(mail_user, users=users, **ldapi)
    assert result["failed"] and "users[1].quota" in result["msg"]
    assert read_entry(slapd, user_dn(slapd, "ok@atomic.test")) is None


def test_imported_crypt_hashes_keep_the_old_passwords(run_module, ldapi, slapd):
    """qmail/vpopmail hashes (MD5-crypt, DES) are stored as they are and slapd binds with them."""
    make_domain(run_module, ldapi, "import.test")
    md5 = crypt_hash("old-md5-pw", "$1$qmailsal$")
    des = crypt_hash("old-des-pw", "ab")
    users = [dict(address="md5@import.test", password_hash=md5, mailbox_host="legacy1"),
             dict(address="des@import.test", password_hash="{CRYPT}" + des, mailbox_host="legacy1")]
    created = run_module(mail_user, diff=True, users=users, **ldapi)
    assert created["summary"]["created"] == 2 and md5 not in json.dumps(created) and des not in json.dumps(created)
    assert read_entry(slapd, user_dn(slapd, "md5@import.test"))["userpassword"] == ["{CRYPT}" + md5]
    assert binds(slapd, "md5@import.test", "old-md5-pw") and not binds(slapd, "md5@import.test", "old-des-pw")
    assert binds(slapd, "des@import.test", "old-des-pw")
    assert run_module(mail_user, users=users, **ldapi)["changed"] is False

    # The cutover: existing users get the pick of the mailbox servers, as new users would.
    moved = run_module(mail_user, users=[{"address": u["address"]} for u in users], mailbox_hosts=["mbox1", "mbox2"],
                       repick_mailbox_host=True, **ldapi)
    assert moved["summary"]["updated"] == 2
    for user in users:
        host = read_entry(slapd, user_dn(slapd, user["address"]))["ispmailmailboxhost"]
        assert host == [pick_mailbox_host(user["address"], ["mbox1", "mbox2"])]

    # A new password later uses the platform's scheme.
    run_module(mail_user, address="des@import.test", password="brand new", **ldapi)
    assert read_entry(slapd, user_dn(slapd, "des@import.test"))["userpassword"][0].startswith("{CRYPT}$6$")

    bad = run_module(mail_user, address="bad@import.test", password_hash="{MD5}abc", mailbox_host="x", **ldapi)
    assert bad["failed"] and "password_hash" in bad["msg"] and "{MD5}abc" not in bad["msg"]
    both = run_module(mail_user, address="both@import.test", password="x", password_hash=md5,
                      mailbox_host="x", **ldapi)
    assert both["failed"] and "either password or password_hash" in both["msg"]


def crypt_hash(password, salt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # pylint: disable=import-outside-toplevel,deprecated-module
    return crypt.crypt(password, salt)


@pytest.mark.parametrize("args, field", [
    (dict(address="not-an-address"), "address"),
    (dict(address="eve@nowhere.test", mailbox_host="mbox01"), "domain nowhere.test"),
    (dict(address="eve@errors.test", quota="12X"), "quota"),
    (dict(address="eve@errors.test", keyword_filters=[{"header": "Subject", "contains": "x", "action": "bounce"}]),
     "keyword_filters[0].action"),
    (dict(address="eve@errors.test", keyword_filters=[{"header": "Subject", "contains": "x", "action": "folder"}]),
     "keyword_filters[0].folder"),
    (dict(address="eve@errors.test"), "mailbox_host"),
])
def test_user_errors_name_the_field(run_module, ldapi, args, field):
    make_domain(run_module, ldapi, "errors.test")
    result = run_module(mail_user, **ldapi, **args)
    assert result["failed"] and field in result["msg"], result["msg"]


def test_domain_errors(run_module, ldapi, slapd):
    bad_state = run_module(mail_domain, name="state.test", migration={"state": "finished"}, **ldapi)
    assert bad_state["failed"] and "migration" in bad_state["msg"] and "state" in bad_state["msg"]
    bad_action = run_module(mail_domain, name="state.test",
                            keyword_filters=[{"header": "Subject", "contains": "x", "action": "folder"}], **ldapi)
    assert bad_action["failed"] and "keyword_filters[0].action" in bad_action["msg"]

    make_domain(run_module, ldapi, "busy.test")
    for name in ("a", "b"):
        run_module(mail_user, address=f"{name}@busy.test", mailbox_host="mbox01", **ldapi)
    busy = run_module(mail_domain, name="busy.test", state="absent", **ldapi)
    assert busy["failed"] and "busy.test" in busy["msg"] and "2 user" in busy["msg"]
    assert read_entry(slapd, f"ou=busy.test,ou=domains,{slapd.base_dn}")

    make_domain(run_module, ldapi, "empty.test")
    removed = run_module(mail_domain, name="empty.test", state="absent", **ldapi)
    assert removed["changed"] and read_entry(slapd, f"ou=empty.test,ou=domains,{slapd.base_dn}") is None
    assert run_module(mail_domain, name="empty.test", state="absent", **ldapi)["changed"] is False


def test_domain_spam_subject_tag_set_replace_and_remove(run_module, ldapi, slapd):
    make_domain(run_module, ldapi, "tag.test")
    dn = f"ou=tag.test,ou=domains,{slapd.base_dn}"
    tagged = run_module(mail_domain, name="tag.test", spam_subject_tag="【迷惑メール】", **ldapi)
    assert tagged["changed"] and tagged["entry"]["spam_subject_tag"] == "【迷惑メール】"
    assert read_entry(slapd, dn)["ispmailspamtag"] == ["【迷惑メール】"]
    assert run_module(mail_domain, name="tag.test", spam_subject_tag="【迷惑メール】", **ldapi)["changed"] is False
    # Other options leave the tag alone; "" removes it (the spamcheck default applies).
    assert run_module(mail_domain, name="tag.test", virus_check=True, **ldapi)["entry"]["spam_subject_tag"]
    removed = run_module(mail_domain, name="tag.test", spam_subject_tag="", **ldapi)
    assert removed["changed"] and "ispmailspamtag" not in read_entry(slapd, dn)
    too_long = run_module(mail_domain, name="tag.test", spam_subject_tag="x" * 65, **ldapi)
    assert too_long["failed"] and "spam_subject_tag" in too_long["msg"]
    two_lines = run_module(mail_domain, name="tag.test", spam_subject_tag="a\nb", **ldapi)
    assert two_lines["failed"] and "one line" in two_lines["msg"]


def test_simple_bind_and_connection_errors(run_module, ldap_root, slapd):
    make_domain(run_module, ldap_root, "simple.test")
    created = run_module(mail_user, address="frank@simple.test", mailbox_host="mbox01", **ldap_root)
    assert created["changed"]

    wrong_pw = run_module(mail_user, **dict(ldap_root, bind_pw="wrong"), address="frank@simple.test")
    assert wrong_pw["failed"] and f"cannot bind to {slapd.ldap_uri}" in wrong_pw["msg"]
    assert "invalidCredentials" in wrong_pw["msg"] and "wrong" not in wrong_pw["msg"]

    down = run_module(mail_user, **dict(ldap_root, server_uri="ldap://127.0.0.1:1/"), address="frank@simple.test")
    assert down["failed"] and down["msg"].startswith("cannot connect to ldap://127.0.0.1:1/")

    external = run_module(mail_user, server_uri=slapd.ldap_uri, base_dn=slapd.base_dn, address="frank@simple.test")
    assert external["failed"] and external["msg"].startswith("bind_dn: ")


def test_replica_refuses_writes_with_clear_message(run_module, slapd):
    args = dict(server_uri=slapd.ldapi_uri, base_dn=slapd.replica_base_dn)
    result = run_module(mail_user, address="gina@replica.test", mailbox_host="mbox01", **args)
    assert result["failed"] and "read-only replica" in result["msg"] and "provider" in result["msg"]
    assert slapd.referral in result["msg"]
    # Reads work on a replica: check mode reports the change without writing.
    assert run_module(mail_user, check=True, address="gina@replica.test", mailbox_host="mbox01", **args)["changed"]


def test_ansible_adhoc_check_diff_and_apply(ansible_adhoc, run_module, ldapi, slapd):
    make_domain(run_module, ldapi, "adhoc.test")
    args = dict(ldapi, address="hana@adhoc.test", password=PASSWORD, mailbox_hosts=["mbox01", "mbox02"], quota="1G")

    rc, checked = ansible_adhoc("mail_user", args, "--check", "--diff")
    assert rc == 0 and checked["changed"], checked
    assert checked["diff"]["after"]["password"] == "(changed)"
    assert read_entry(slapd, user_dn(slapd, "hana@adhoc.test")) is None

    rc, applied = ansible_adhoc("mail_user", args, "--diff")
    assert rc == 0 and applied["changed"] and applied["entry"]["quota"] == 1024 ** 3
    assert PASSWORD not in json.dumps(applied) and "$6$" not in json.dumps(applied)
    assert binds(slapd, "hana@adhoc.test", PASSWORD)

    rc, again = ansible_adhoc("mail_user", args)
    assert rc == 0 and again["changed"] is False

    rc, failed = ansible_adhoc("mail_domain", dict(ldapi, name="adhoc.test", state="absent"))
    assert rc != 0 and "adhoc.test" in failed["msg"] and "1 user" in failed["msg"]


def test_slot_map_created_once_and_users_converted(run_module, ldapi, slapd):
    # A base of its own: the map is global to a directory, and other tests use the session's.
    base = f"ou=slotmap,{slapd.base_dn}"
    conn = ldap3.Connection(slapd.ldap_uri.rstrip("/"), slapd.root_dn, slapd.root_pw, auto_bind=True)
    for dn in (base, f"ou=domains,{base}"):
        assert conn.add(dn, "organizationalUnit"), conn.result
    conn.unbind()
    args = dict(ldapi, base_dn=base)
    assert not run_module(mail_domain, name="slots.test", **args).get("failed")
    # A user made before the map has no slot; the map's run gives it one of its server's.
    early = run_module(mail_user, address="early@slots.test", mailbox_host="mbox02", **args)
    assert early["entry"]["mailbox_slot"] is None

    first = run_module(mail_slots, servers=["mbox01", "mbox02"], slot_count=16, **args)
    assert not first.get("failed"), first
    summary = first["summary"]
    assert first["changed"] and summary["slots_created"] == 16 and summary["servers_created"] == 2
    assert summary["users_given_slot"] == 1 and summary["home"] == summary["holder"]
    assert sum(summary["home"].values()) == 16 and set(summary["home"]) == {"mbox01", "mbox02"}
    slot = read_entry(slapd, user_dn(slapd, "early@slots.test").replace(slapd.base_dn, base))["ispmailmailboxslot"][0]
    stored = read_entry(slapd, slot)
    assert stored["ispmailslothome"] == ["mbox02"] and stored["ispmailmailboxhost"] == ["mbox02"]
    assert stored["ispmailslotepoch"] == ["1"]

    again = run_module(mail_slots, servers=["mbox01", "mbox02"], slot_count=16, **args)
    assert again["changed"] is False and again["summary"]["slots_created"] == 0

    # New users get a slot of their server; a legacy host means a pin without slot.
    new = run_module(mail_user, address="new@slots.test", mailbox_host="mbox01", **args)
    assert read_entry(slapd, new["entry"]["mailbox_slot"])["ispmailslothome"] == ["mbox01"]
    legacy = run_module(mail_user, address="old@slots.test", mailbox_host="legacy1", **args)
    assert legacy["entry"]["mailbox_slot"] is None

    # A restore's epoch floor: every slot gets a new epoch, the holders stay; once only.
    floor = run_module(mail_slots, servers=["mbox01", "mbox02"], epoch_floor=1796600000, **args)  # size: the map's
    assert floor["changed"] and floor["summary"]["epochs_raised"] == 16
    assert read_entry(slapd, slot)["ispmailslotepoch"] == ["1796600000"]
    assert read_entry(slapd, slot)["ispmailmailboxhost"] == ["mbox02"]
    assert run_module(mail_slots, servers=["mbox01", "mbox02"], slot_count=16, epoch_floor=1796600000,
                      **args)["changed"] is False

    # The size of a map is fixed; bad server names are refused before any write.
    resized = run_module(mail_slots, servers=["mbox01", "mbox02"], slot_count=8, **args)
    assert resized["failed"] and "cannot change" in resized["msg"]
    bad = run_module(mail_slots, servers=["mbox 01"], **args)
    assert bad["failed"] and "servers" in bad["msg"]
