"""Filter for the OpenLDAP role: the syncrepl stanzas (olcSyncrepl) of one database.

Used by roles/ldap/tasks/provider.yml (one stanza per other provider) and consumer.yml
(one per provider).
"""

from ansible.errors import AnsibleFilterError

# Delta-syncrepl: changes are replayed from each provider's log of successful writes, so
# two changes to one entry on two providers both survive (docs/decisions/0007).
ACCESSLOG_SUFFIX = "cn=accesslog"
ACCESSLOG_FILTER = "(&(objectClass=auditWriteObject)(reqResult=0))"
# A provider that stops answering must not hold the consumer: connect and TLS handshake
# (network-timeout; without it a handshake to a half-started provider blocked for minutes,
# and slapd's shutdown waited for it), each operation (timeout), and a silent peer of a
# persistent session is noticed by TCP keepalive (idle:probes:interval, in seconds).
TIMEOUTS = "network-timeout=5 timeout=4 keepalive=60:5:10"


def ldap_syncrepl(provider_uris, first_rid, base_dn, bind_dn, credentials, ca_file):
    """olcSyncrepl values, in order, replicating base_dn from each of provider_uris.

    Each stanza has rid first_rid + position (three digits, unique within the database),
    refreshAndPersist, delta-syncrepl from the provider's cn=accesslog, StartTLS that must
    succeed with a certificate verified against ca_file, retries forever (5 s, then every
    minute) and gives up on a silent provider (TIMEOUTS). Written exactly as slapd stores
    them, so ldap_attrs state=exact compares equal on the next run.

    Raises AnsibleFilterError for a URI that is not ldap:// or a rid outside 1..999.
    """
    if not isinstance(provider_uris, list):
        raise AnsibleFilterError("ldap_syncrepl: provider_uris must be a list of ldap:// URIs")
    stanzas = []
    for position, uri in enumerate(provider_uris):
        rid = int(first_rid) + position
        if not isinstance(uri, str) or not uri.startswith("ldap://") or " " in uri:
            raise AnsibleFilterError(f"ldap_syncrepl: {uri!r} is not an ldap:// URI")
        if not 0 < rid < 1000:
            raise AnsibleFilterError(f"ldap_syncrepl: rid {rid} is outside 1..999")
        stanzas.append(
            f"{{{position}}}rid={rid:03d} provider={uri} bindmethod=simple "
            f'binddn="{bind_dn}" credentials={credentials} '
            f'searchbase="{base_dn}" type=refreshAndPersist retry="5 10 60 +" {TIMEOUTS} '
            f"starttls=critical tls_reqcert=demand tls_cacert={ca_file} "
            f'logbase="{ACCESSLOG_SUFFIX}" logfilter="{ACCESSLOG_FILTER}" syncdata=accesslog')
    return stanzas


class FilterModule:
    def filters(self):
        return {"ldap_syncrepl": ldap_syncrepl}
