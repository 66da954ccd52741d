"""The take-over map's access rules (filter_plugins/ldap_acl.py) on a real slapd: the
take-over account changes holders, epochs and votes only, and only on the arbiter; the
readers read the map and nothing more."""

import os
import subprocess
import sys
from pathlib import Path

import ldap3
import pytest

from slapd_servers import BASE_DN

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "filter_plugins"))
from ldap_acl import ldap_access_rules  # noqa: E402

ACCOUNTS = {"replicator": {"read_attributes": []},
            "gateway": {"read_attributes": ["entry", "mail"], "slots": "read"},
            "takeover": {"read_attributes": [], "slots": "write"}}
PASSWORD = "service-secret"
SLOT = f"cn=7,ou=slots,{BASE_DN}"
SERVER = f"cn=mbox1,ou=slots,{BASE_DN}"
INSUFFICIENT_ACCESS = 50


def ldapi(server, ldif):
    subprocess.run(["ldapmodify", "-Q", "-Y", "EXTERNAL", "-H", server.ldapi_uri], input=ldif, text=True,
                   check=True, capture_output=True)


def as_account(server, name):
    return ldap3.Connection(server.ldap_uri.rstrip("/"), f"cn={name},ou=services,{BASE_DN}", PASSWORD,
                            auto_bind=True)


def cas(conn, old, new, epoch):
    conn.modify(SLOT, {"ispmailMailboxHost": [(ldap3.MODIFY_DELETE, [old]), (ldap3.MODIFY_ADD, [new])],
                       "ispmailSlotEpoch": [(ldap3.MODIFY_DELETE, [str(epoch)]), (ldap3.MODIFY_ADD, [str(epoch + 1)])]})
    return conn.result["result"]


@pytest.fixture(params=[True, False], ids=["arbiter", "other-provider"])
def directory(request, tmp_path, private_slapd_in):
    with private_slapd_in(tmp_path) as server:
        peercred = f"gidNumber={os.getgid()}+uidNumber={os.getuid()},cn=peercred,cn=external,cn=auth"
        rules = ldap_access_rules(ACCOUNTS, BASE_DN, peercred, slot_writes=request.param)
        ldapi(server, "dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\nreplace: olcAccess\n"
                      + "".join(f"olcAccess: {{{i}}}{rule}\n" for i, rule in enumerate(rules)))
        entries = [f"dn: ou=services,{BASE_DN}\nchangetype: add\nobjectClass: organizationalUnit\nou: services\n"]
        entries += [f"dn: cn={name},ou=services,{BASE_DN}\nchangetype: add\nobjectClass: organizationalRole\n"
                    f"objectClass: simpleSecurityObject\ncn: {name}\nuserPassword: {PASSWORD}\n"
                    for name in ("gateway", "takeover")]
        entries += [f"dn: ou=slots,{BASE_DN}\nchangetype: add\nobjectClass: organizationalUnit\nou: slots\n",
                    f"dn: {SLOT}\nchangetype: add\nobjectClass: ispmailMailboxSlot\ncn: 7\n"
                    "ispmailMailboxHost: mbox1\nispmailSlotHome: mbox1\nispmailSlotEpoch: 1\n",
                    f"dn: {SERVER}\nchangetype: add\nobjectClass: ispmailMailboxServer\ncn: mbox1\n",
                    f"dn: mail=ann@x.test,ou=domains,{BASE_DN}\nchangetype: add\nobjectClass: inetOrgPerson\n"
                    "objectClass: ispmailUser\ncn: ann\nsn: ann\nmail: ann@x.test\nispmailEnabled: TRUE\n"]
        ldapi(server, "\n".join(entries))
        yield server, request.param


def test_the_take_over_account_moves_slots_and_votes_only_on_the_arbiter(directory):
    server, arbiter = directory
    takeover = as_account(server, "takeover")
    expected = 0 if arbiter else INSUFFICIENT_ACCESS
    assert cas(takeover, "mbox1", "mbox2", 1) == expected
    takeover.modify(SERVER, {"ispmailDownVote": [(ldap3.MODIFY_ADD, ["gw1 1796600000"])]})
    assert takeover.result["result"] == expected
    # Never the home, never an entry of its own, never a user.
    takeover.modify(SLOT, {"ispmailSlotHome": [(ldap3.MODIFY_REPLACE, ["mbox2"])]})
    assert takeover.result["result"] == INSUFFICIENT_ACCESS
    takeover.delete(SLOT)
    assert takeover.result["result"] == INSUFFICIENT_ACCESS
    takeover.search(f"ou=domains,{BASE_DN}", "(mail=*)", attributes=["mail"])
    assert takeover.entries == []
    takeover.search(SLOT, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["ispmailMailboxHost"])
    assert takeover.entries[0].ispmailMailboxHost.value == ("mbox2" if arbiter else "mbox1")


def test_a_reader_reads_the_map_and_changes_nothing(directory):
    server, _ = directory
    gateway = as_account(server, "gateway")
    gateway.search(f"ou=slots,{BASE_DN}", "(objectClass=ispmailMailboxSlot)",
                   attributes=["ispmailMailboxHost", "ispmailSlotEpoch", "ispmailSlotHome"])
    assert [(e.ispmailMailboxHost.value, e.ispmailSlotEpoch.value) for e in gateway.entries] == [("mbox1", 1)]
    assert cas(gateway, "mbox1", "mbox2", 1) == INSUFFICIENT_ACCESS
