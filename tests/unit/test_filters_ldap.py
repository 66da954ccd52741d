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


def test_slot_map_rule_lists_readers_and_writers_only():
    accounts = dict(ACCOUNTS, takeover={"read_attributes": [], "slots": "write"},
                    gateway=dict(ACCOUNTS["gateway"], slots="read"))
    rules = ldap_access_rules(accounts, BASE, ROOT)
    slot_rules = [r for r in rules if "ou=slots" in r]
    assert slot_rules == [
        'to dn.subtree="ou=slots,dc=ispmail,dc=test" '
        'by dn.exact="cn=gateway,ou=services,dc=ispmail,dc=test" read '
        'by dn.exact="cn=takeover,ou=services,dc=ispmail,dc=test" write by * none']
    # Before the final deny, and the take-over account reads nothing under ou=domains.
    assert rules.index(slot_rules[0]) < len(rules) - 1
    assert not any("cn=takeover" in r and "ou=domains" in r for r in rules)


def test_slot_access_is_checked():
    with pytest.raises(AnsibleFilterError, match="gateway.slots"):
        ldap_access_rules(dict(ACCOUNTS, gateway={"read_attributes": ["mail"], "slots": "manage"}), BASE, ROOT)
