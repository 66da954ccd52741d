import pytest
from ansible.errors import AnsibleFilterError

from ldap_acl import ldap_access_rules

BASE = "dc=ispmail,dc=test"
ROOT = "gidNumber=0+uidNumber=0,cn=peercred,cn=external,cn=auth"
ACCOUNTS = {
    "replicator": {"read_attributes": []},
    "webmail": {"read_attributes": ["entry", "mail", "cn"]},
    "gateway": {"read_attributes": ["entry", "mail", "ispmailMailboxHost"]},
}


def test_password_rule_comes_first_and_grants_no_reads_to_services():
    rules = ldap_access_rules(ACCOUNTS, BASE, ROOT)
    assert rules[0].startswith("to attrs=userPassword ")
    assert "cn=gateway" not in rules[0] and "cn=webmail" not in rules[0]
    assert "by self =xw by anonymous auth by * none" in rules[0]


def test_one_rule_per_service_in_name_order_then_deny():
    rules = ldap_access_rules(ACCOUNTS, BASE, ROOT)
    assert [r.split('by dn.exact="cn=')[1].split(",")[0] for r in rules[2:4]] == ["gateway", "webmail"]
    assert "attrs=entry,mail,cn " in rules[3]
    assert rules[-1] == "to * by * none"


def test_replicator_is_required():
    with pytest.raises(AnsibleFilterError, match="replicator"):
        ldap_access_rules({"gateway": {"read_attributes": ["mail"]}}, BASE, ROOT)


def test_attribute_names_are_checked():
    bad = dict(ACCOUNTS, gateway={"read_attributes": ["mail by * write"]})
    with pytest.raises(AnsibleFilterError, match="gateway.read_attributes"):
        ldap_access_rules(bad, BASE, ROOT)


def test_slot_map_rules_read_for_all_write_only_holders_and_votes_on_the_arbiter():
    accounts = dict(ACCOUNTS, takeover={"read_attributes": [], "slots": "write"},
                    gateway=dict(ACCOUNTS["gateway"], slots="read"))
    takeover = 'by dn.exact="cn=takeover,ou=services,dc=ispmail,dc=test"'
    gateway = 'by dn.exact="cn=gateway,ou=services,dc=ispmail,dc=test"'
    read_rule = f'to dn.subtree="ou=slots,dc=ispmail,dc=test" {gateway} read {takeover} read by * none'
    elsewhere = ldap_access_rules(accounts, BASE, ROOT)
    assert [r for r in elsewhere if "ou=slots" in r] == [read_rule]
    arbiter = ldap_access_rules(accounts, BASE, ROOT, slot_writes=True)
    assert [r for r in arbiter if "ou=slots" in r] == [
        'to dn.subtree="ou=slots,dc=ispmail,dc=test" attrs=ispmailMailboxHost,ispmailSlotEpoch,ispmailDownVote '
        f'{takeover} write by * break', read_rule]
    # Before the final deny, and the take-over account reads nothing under ou=domains.
    assert arbiter.index(read_rule) < len(arbiter) - 1
    assert not any("cn=takeover" in r and "ou=domains" in r for r in arbiter)


def test_slot_access_is_checked():
    with pytest.raises(AnsibleFilterError, match="gateway.slots"):
        ldap_access_rules(dict(ACCOUNTS, gateway={"read_attributes": ["mail"], "slots": "manage"}), BASE, ROOT)
