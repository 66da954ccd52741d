import pytest
from ansible.errors import AnsibleFilterError

from ldap_replication import ldap_syncrepl

BASE = "dc=ispmail,dc=test"
REPLICATOR = f"cn=replicator,ou=services,{BASE}"
ARGS = (BASE, REPLICATOR, "secret", "/etc/ssl/ispmail/ca.crt")


def test_one_numbered_stanza_per_provider_with_consecutive_rids():
    stanzas = ldap_syncrepl(["ldap://ldap1.x/", "ldap://ldap2.x/"], 101, *ARGS)
    assert [s.split(" ")[0] for s in stanzas] == ["{0}rid=101", "{1}rid=102"]
    assert "provider=ldap://ldap2.x/ " in stanzas[1]


def test_stanzas_are_delta_syncrepl_over_verified_starttls():
    stanza = ldap_syncrepl(["ldap://ldap1.x/"], 1, *ARGS)[0]
    assert 'logbase="cn=accesslog"' in stanza and "syncdata=accesslog" in stanza
    assert 'logfilter="(&(objectClass=auditWriteObject)(reqResult=0))"' in stanza
    assert "starttls=critical tls_reqcert=demand tls_cacert=/etc/ssl/ispmail/ca.crt" in stanza
    assert f'binddn="{REPLICATOR}" credentials=secret' in stanza
    assert "type=refreshAndPersist" in stanza


def test_no_providers_means_no_stanzas():
    assert ldap_syncrepl([], 1, *ARGS) == []


@pytest.mark.parametrize("uris", [["ldaps://ldap1/"], ["ldap://a b/"], "ldap://ldap1/", [None]])
def test_bad_provider_uris_are_refused(uris):
    with pytest.raises(AnsibleFilterError):
        ldap_syncrepl(uris, 1, *ARGS)


def test_rids_stay_within_three_digits():
    with pytest.raises(AnsibleFilterError, match="rid 1000"):
        ldap_syncrepl(["ldap://a/", "ldap://b/"], 999, *ARGS)
