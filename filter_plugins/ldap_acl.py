"""Filter for the OpenLDAP role: the database's access rules (olcAccess) as data.

Used by roles/ldap/tasks/config.yml. Replication (olcSyncrepl) is in ldap_replication.py.
"""

from ansible.errors import AnsibleFilterError


def ldap_access_rules(accounts, base_dn, root_peer, slot_writes=False):
    """olcAccess values, in order, for the platform's directory.

    accounts is ldap_service_accounts ({name: {read_attributes: [...], slots: read|write}},
    `replicator` required); root_peer is root's SASL EXTERNAL identity over ldapi;
    slot_writes: whether this server is the take-over map's arbiter (decision 0010).

    - userPassword: usable for binds only; users may change their own; besides root,
      only the replicator reads it (consumers need the hashes for local binds).
    - root over ldapi manages everything; the replicator reads everything.
    - each other service account reads only its read_attributes under ou=domains, in
      name order; an account without read_attributes gets no rule.
    - the mailbox take-over map (ou=slots): read by the accounts whose `slots` says read or
      write; those that may write change only holders, epochs and votes, and only on the
      arbiter (slot_writes), so a compare-and-swap can never land on another provider.
    - users read their own entry; nobody else sees anything.

    Raises AnsibleFilterError if `replicator` is missing, a read_attributes entry is
    not an attribute name or `slots` is neither read nor write.
    """
    if not isinstance(accounts, dict) or "replicator" not in accounts:
        raise AnsibleFilterError("ldap_service_accounts must be a dict that includes 'replicator'")
    services = f"ou=services,{base_dn}"
    domains = f"ou=domains,{base_dn}"
    replicator = f"cn=replicator,{services}"
    root = f'by dn.exact="{root_peer}" manage'
    rules = [
        f'to attrs=userPassword {root} by dn.exact="{replicator}" read by self =xw by anonymous auth by * none',
        f'to * {root} by dn.exact="{replicator}" read by * break',
    ]
    for name, account in sorted(accounts.items()):
        attrs = account.get("read_attributes") or []
        if name == "replicator" or not attrs:
            continue
        if not all(isinstance(a, str) and a.replace("-", "").isalnum() for a in attrs):
            raise AnsibleFilterError(f"ldap_service_accounts.{name}.read_attributes must be attribute names")
        rules.append(f'to dn.subtree="{domains}" attrs={",".join(attrs)} '
                     f'by dn.exact="cn={name},{services}" read by * break')
    slots = f"ou=slots,{base_dn}"
    readers, writers = [], []
    for name, account in sorted(accounts.items()):
        access = account.get("slots")
        if access is None:
            continue
        if access not in ("read", "write"):
            raise AnsibleFilterError(f"ldap_service_accounts.{name}.slots must be read or write")
        readers.append(f'by dn.exact="cn={name},{services}" read')
        if access == "write":
            writers.append(f'by dn.exact="cn={name},{services}" write')
    if writers and slot_writes:
        rules.append(f'to dn.subtree="{slots}" attrs=ispmailMailboxHost,ispmailSlotEpoch,ispmailDownVote '
                     f'{" ".join(writers)} by * break')
    if readers:
        rules.append(f'to dn.subtree="{slots}" {" ".join(readers)} by * none')
    rules.append(f'to dn.subtree="{domains}" by self read by * none')
    rules.append("to * by * none")
    return rules


class FilterModule:
    def filters(self):
        return {"ldap_access_rules": ldap_access_rules}
