#!/usr/bin/python
# -*- coding: utf-8 -*-

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mail_user
short_description: Manage mail users in the platform's OpenLDAP directory
description:
  - Creates, updates and removes mail users stored as C(mail=<address>,ou=<domain>,ou=domains,<base_dn>)
    with the object classes C(inetOrgPerson) and C(ispmailUser).
  - Only the options given are enforced on an existing user; an option left out keeps the value in
    LDAP. For O(spam_check) and O(virus_check) that is the default too; with
    O(unset_checks=domain_default) an unset contract removes the attribute, so the domain default
    applies (what a complete accounts file, as in C(playbooks/users.yml), means).
  - Passwords are stored as C({CRYPT}) SHA-512 crypt, which slapd simple binds and Dovecot verify.
    Neither the password nor its hash is ever returned.
  - All input is validated before the first write, so bad input leaves LDAP untouched.
  - The bulk form O(users) reads the whole tree with one paged search and writes only what differs,
    for thousands of users in one task.
version_added: "1.0.0"
author: ISP mail platform team
requirements:
  - ldap3 (Python library) on the host that runs the module
options:
  address:
    description:
      - Mail address of the user, stored in lower case. Its domain must exist (see M(mail_domain)).
      - Mutually exclusive with O(users); one of the two is required.
    type: str
  password:
    description: Plain-text password; hashed by the module. Leave out to keep the current one.
    type: str
  password_hash:
    description:
      - A password hash carried over from another system, stored as it is (V({CRYPT}$1$...) MD5-crypt,
        V({CRYPT}xxxxxxxxxxxxx) DES crypt, or SHA-crypt V($5$)/V($6$)); slapd and Dovecot verify it with
        crypt(3), so the subscriber keeps the old password. Mutually exclusive with O(password); a
        password set later with O(password) replaces it with the platform's scheme.
      - Follows O(update_password) like O(password); an unchanged hash reports no change.
    type: str
  update_password:
    description:
      - V(always) sets O(password) whenever it differs from the stored one (checked against the
        stored hash, so an unchanged password reports no change).
      - V(on_create) sets it only when the user is created.
    type: str
    choices: [always, on_create]
    default: always
  quota:
    description:
      - Mailbox quota as bytes or a whole number with a binary unit K, M, G or T (V(500M), V(2G)).
        V(0) means unlimited. Stored in bytes.
    type: raw
  forward_to:
    description: Addresses mail is forwarded to. V([]) removes all forwards.
    type: list
    elements: str
  keep_copy:
    description: Keep a copy of forwarded mail in the mailbox.
    type: bool
  spam_check:
    description:
      - Spam check contract of the user. Unset (or null) keeps the stored value, or with
        O(unset_checks=domain_default) removes it so the domain default applies.
    type: bool
  virus_check:
    description:
      - Virus check contract of the user. Unset (or null) keeps the stored value, or with
        O(unset_checks=domain_default) removes it so the domain default applies.
    type: bool
  unset_checks:
    description:
      - What an unset O(spam_check) or O(virus_check) means. V(keep) leaves the stored contract alone
        (for changes such as a new mailbox host); V(domain_default) removes it.
    type: str
    choices: [keep, domain_default]
    default: keep
  keyword_filters:
    description:
      - The user's keyword filters, stored as canonical JSON values. V([]) removes all.
      - LDAP values are unordered, so the order of the list does not matter.
    type: list
    elements: dict
    suboptions:
      header:
        description: Header field to inspect, for example V(Subject).
        type: str
        required: true
      contains:
        description: Text the header must contain.
        type: str
        required: true
      action:
        description: One of V(discard), V(folder) (needs O(keyword_filters[].folder)) or V(tag).
        type: str
        required: true
      folder:
        description: Target folder; required with action V(folder) and only valid with it.
        type: str
  mailbox_host:
    description:
      - Mailbox server of the user. When left out on create, it is picked from O(mailbox_hosts)
        by rendezvous hashing of the address; an existing value is only changed when this option
        is given.
      - When the directory has the mailbox take-over map (C(ou=slots), decision 0010) and this
        server is the home of slots, the user also gets one of them (C(ispmailMailboxSlot), shown as
        C(mailbox_slot)), chosen by a hash of the address and kept while the server stays the same;
        whoever holds the slot serves the user. A server without slots (a legacy host, the
        V(moving) marker of a move) means a pin without slot. Existing users without a slot get one
        on the next run.
    type: str
  mailbox_hosts:
    description:
      - Mailbox servers to pick from when a user is created without O(mailbox_host). The pick is
        deterministic for an address.
    type: list
    elements: str
  repick_mailbox_host:
    description:
      - Also give existing users without O(mailbox_host) the pick from O(mailbox_hosts), as for a
        new user (the cutover of a migrated domain moves its users from the legacy host).
    type: bool
    default: false
  enabled:
    description: Whether the account may log in and receive mail. New users are enabled unless set.
    type: bool
  state:
    description: V(absent) removes the user; only the address is needed then.
    type: str
    choices: [present, absent]
    default: present
  users:
    description:
      - Bulk form, instead of O(address); a list of users with the per-user keys O(address),
        O(password), O(update_password), O(quota), O(forward_to), O(keep_copy), O(spam_check),
        O(virus_check), O(keyword_filters), O(mailbox_host), O(enabled) and O(state).
      - A key an item leaves unset takes the value of the same option at the top level.
      - Users in LDAP but not in the list are left alone.
    type: list
    elements: dict
extends_documentation_fragment:
  - ispmail_ldap
"""

EXAMPLES = r"""
- name: Create a user with a pinned mailbox server
  mail_user:
    base_dn: dc=ispmail,dc=test
    address: alice@example.com
    password: "{{ vault_alice_password }}"
    quota: 2G
    mailbox_host: mbox01
    keyword_filters:
      - {header: Subject, contains: "[SPAM]", action: folder, folder: Junk}

- name: Apply all users of the customer database in one run
  mail_user:
    base_dn: dc=ispmail,dc=test
    mailbox_hosts: [mbox01, mbox02, mbox03, mbox04]
    update_password: on_create
    users: "{{ ispmail_users }}"

- name: Remove a user
  mail_user:
    base_dn: dc=ispmail,dc=test
    address: bob@example.com
    state: absent
"""

RETURN = r"""
dn:
  description: DN of the user (single form).
  returned: single form
  type: str
  sample: mail=alice@example.com,ou=example.com,ou=domains,dc=ispmail,dc=test
entry:
  description: The user as stored after the run, without password; V({}) when absent.
  returned: single form
  type: dict
  sample:
    address: alice@example.com
    enabled: true
    mailbox_host: mbox01
    mailbox_slot: cn=17,ou=slots,dc=ispmail,dc=test
    quota: 2147483648
    forward_to: []
    keep_copy: null
    spam_check: null
    virus_check: true
    keyword_filters: [{action: folder, contains: "[SPAM]", folder: Junk, header: Subject}]
summary:
  description:
    - Counts of the bulk form and the entries that changed. (Not called C(results), which Ansible
      reserves for loops and renames.)
  returned: bulk form
  type: dict
  sample: {created: 2, updated: 1, removed: 0, unchanged: 4997, changed_addresses: [a@example.com]}
"""

from ansible.module_utils.ispmail_ldap import (
    PASSWORD_CHANGED, PASSWORD_UNCHANGED, USER_FILTER_ACTIONS, Attr, IspmailError, Write, apply_to_attrs, apply_writes,
    attribute_changes, canonical_keyword_filters, connect, dn_of, domain_dn, domains_dn, encode,
    entry_view, equality_filter, find_duplicates, hash_password, merge_item_defaults, parse_quota,
    password_matches, pick_mailbox_host, pick_slot, read_slot_homes, run_directory_module, search_subtree,
    slot_home_of, validate_address, validate_crypt_hash)

USER_ATTRS = {
    "address": Attr("mail", "ci"),
    "enabled": Attr("ispmailEnabled", "bool"),
    "mailbox_host": Attr("ispmailMailboxHost", "ci"),
    "mailbox_slot": Attr("ispmailMailboxSlot", "ci"),
    "quota": Attr("ispmailQuota", "int"),
    "forward_to": Attr("ispmailForwardTo", "ci_list"),
    "keep_copy": Attr("ispmailKeepCopy", "bool"),
    "spam_check": Attr("ispmailSpamCheck", "bool"),
    "virus_check": Attr("ispmailVirusCheck", "bool"),
    "keyword_filters": Attr("ispmailKeywordFilter", "filters"),
}
READ_ATTRIBUTES = ["objectClass", "ispmailDomainName", "userPassword"] + [a.name for a in USER_ATTRS.values()]
# Enforced only when given; spam_check and virus_check also when unset_checks=domain_default.
OPTIONAL_SETTINGS = ("enabled", "mailbox_host", "quota", "forward_to", "keep_copy", "keyword_filters")
CONTRACTS = ("spam_check", "virus_check")


def user_options(item):
    """Per-user options; inside a users item they have no defaults so the top level can fill them."""
    return dict(
        address=dict(type="str", required=item),
        password=dict(type="str", no_log=True),
        password_hash=dict(type="str", no_log=True),
        update_password=dict(type="str", choices=["always", "on_create"], default=None if item else "always",
                             no_log=False),
        quota=dict(type="raw"),
        forward_to=dict(type="list", elements="str"),
        keep_copy=dict(type="bool"),
        spam_check=dict(type="bool"),
        virus_check=dict(type="bool"),
        keyword_filters=dict(type="list", elements="dict", options=dict(
            header=dict(type="str", required=True),
            contains=dict(type="str", required=True),
            action=dict(type="str", required=True),
            folder=dict(type="str"),
        )),
        mailbox_host=dict(type="str"),
        enabled=dict(type="bool"),
        state=dict(type="str", choices=["present", "absent"], default=None if item else "present"),
    )


PER_USER_KEYS = tuple(user_options(False))


def normalise_user(item, field):
    """The validated per-user input with canonical values; field prefixes error messages."""
    user = dict(item)
    user["address"] = validate_address(item["address"], f"{field}address")
    if item["password"] is not None and item["password_hash"] is not None:
        raise IspmailError(f"{field}password_hash: give either password or password_hash, not both")
    if item["password_hash"] is not None:
        user["password_hash"] = validate_crypt_hash(item["password_hash"], f"{field}password_hash")
    if item["quota"] is not None:
        user["quota"] = parse_quota(item["quota"], f"{field}quota")
    if item["forward_to"] is not None:
        user["forward_to"] = sorted({validate_address(target, f"{field}forward_to[{index}]")
                                     for index, target in enumerate(item["forward_to"])})
    user["keyword_filters"] = canonical_keyword_filters(
        item["keyword_filters"], USER_FILTER_ACTIONS, f"{field}keyword_filters")
    if item["mailbox_host"] is not None:
        user["mailbox_host"] = item["mailbox_host"].strip().lower()
        if not user["mailbox_host"]:
            raise IspmailError(f"{field}mailbox_host: must not be empty")
    return user


def with_password_marker(view, stored_hash, changed):
    if changed:
        return dict(view, password=PASSWORD_CHANGED)
    return dict(view, password=PASSWORD_UNCHANGED) if stored_hash else view


def slot_change(address, host, current_slot, slot_homes, base_dn):
    """{"mailbox_slot": DN or None} when the user's slot must change for host, else {}."""
    if not slot_homes or (current_slot and slot_home_of(current_slot, slot_homes) == host.lower()):
        return {}
    return {"mailbox_slot": pick_slot(address, host, slot_homes, base_dn)}


def plan_user(user, current, domain_dns, mailbox_hosts, field, unset_checks="keep", repick=False,
              slot_homes=None, base_dn=""):
    """(write or None, dn, before, after) for one user; raises before anything is written."""
    address = user["address"]
    if user["state"] == "absent":
        if current is None:
            return None, None, {}, {}
        return Write("delete", current[0], {}), current[0], entry_view(USER_ATTRS, current[1]), {}

    desired = {key: user[key] for key in OPTIONAL_SETTINGS if user[key] is not None}
    desired.update({key: user[key] for key in CONTRACTS if user[key] is not None or unset_checks == "domain_default"})
    password = user["password"]
    password_hash = user["password_hash"]

    if current is None:
        local_part, _, domain = address.partition("@")
        if domain not in domain_dns:
            raise IspmailError(f"{field}address: domain {domain} of {address} does not exist in LDAP; "
                               "create it with mail_domain first")
        if "mailbox_host" not in desired:
            if not mailbox_hosts:
                raise IspmailError(f"{field}mailbox_host: needed to create {address}; give it or mailbox_hosts")
            desired["mailbox_host"] = pick_mailbox_host(address, mailbox_hosts)
        desired.setdefault("enabled", True)
        desired["address"] = address
        desired.update(slot_change(address, desired["mailbox_host"], None, slot_homes, base_dn))
        attrs = {USER_ATTRS[key].name: encode(USER_ATTRS[key].kind, value) for key, value in desired.items()}
        attrs.update(objectClass=["inetOrgPerson", "ispmailUser"], cn=[address], sn=[local_part], uid=[address])
        if password is not None:
            attrs["userPassword"] = [hash_password(password)]
        elif password_hash is not None:
            attrs["userPassword"] = [password_hash]
        dn = dn_of(("mail", address), domain_dns[domain])
        after = entry_view(USER_ATTRS, {name.lower(): values for name, values in attrs.items()})
        return Write("add", dn, attrs), dn, {}, with_password_marker(after, None, "userPassword" in attrs)

    dn, attrs = current
    if repick and "mailbox_host" not in desired:
        if not mailbox_hosts:
            raise IspmailError(f"{field}mailbox_hosts: needed to pick a mailbox server for {address}")
        desired["mailbox_host"] = pick_mailbox_host(address, mailbox_hosts)
    host = desired.get("mailbox_host") or (attrs.get("ispmailmailboxhost") or [""])[0]
    if host:
        desired.update(slot_change(address, host, (attrs.get("ispmailmailboxslot") or [None])[0], slot_homes,
                                   base_dn))
    stored_hash = (attrs.get("userpassword") or [None])[0]
    changes = attribute_changes(USER_ATTRS, attrs, desired)
    new_password = (password is not None and user["update_password"] == "always"
                    and not password_matches(password, stored_hash))
    new_hash = password_hash is not None and user["update_password"] == "always" and password_hash != stored_hash
    before = with_password_marker(entry_view(USER_ATTRS, attrs), stored_hash, False)
    after = with_password_marker(entry_view(USER_ATTRS, apply_to_attrs(attrs, changes)), stored_hash,
                                 new_password or new_hash)
    if new_password:
        changes["userPassword"] = [hash_password(password)]
    elif new_hash:
        changes["userPassword"] = [password_hash]
    return (Write("modify", dn, changes) if changes else None), dn, before, after


def index_entries(entries):
    """Domain DNs by domain name and (dn, attrs) of users by address, from one search."""
    domain_dns, users = {}, {}
    for dn, attrs in entries:
        classes = {value.lower() for value in attrs.get("objectclass", [])}
        if "ispmaildomain" in classes:
            for name in attrs.get("ispmaildomainname", []):
                domain_dns[name.lower()] = dn
        if "ispmailuser" in classes:
            for address in attrs.get("mail", []):
                users[address.lower()] = (dn, attrs)
    return domain_dns, users


def run(module):
    params = module.params
    bulk = params["users"] is not None
    if bulk:
        items = [(merge_item_defaults(item, params, PER_USER_KEYS), f"users[{index}].")
                 for index, item in enumerate(params["users"])]
    else:
        items = [({key: params[key] for key in PER_USER_KEYS}, "")]
    users = [normalise_user(item, field) for item, field in items]
    duplicates = find_duplicates(user["address"] for user in users)
    if duplicates:
        raise IspmailError(f"users: listed more than once: {', '.join(duplicates)}")

    conn = connect(params)
    try:
        if bulk:
            entries = search_subtree(conn, domains_dn(params["base_dn"]),
                                     "(|(objectClass=ispmailDomain)(objectClass=ispmailUser))", READ_ATTRIBUTES)
        else:
            address = users[0]["address"]
            entries = search_subtree(conn, domain_dn(address.partition("@")[2], params["base_dn"]),
                                     f"(|(objectClass=ispmailDomain){equality_filter('mail', address)})",
                                     READ_ATTRIBUTES)
        domain_dns, existing = index_entries(entries)
        slot_homes = read_slot_homes(conn, params["base_dn"])
        plans = [plan_user(user, existing.get(user["address"]), domain_dns, params["mailbox_hosts"], field,
                           params["unset_checks"], params["repick_mailbox_host"], slot_homes, params["base_dn"])
                 for user, (_, field) in zip(users, items)]
        writes = [write for write, _, _, _ in plans if write]
        if writes and not module.check_mode:
            apply_writes(conn, writes, params["server_uri"])
    finally:
        conn.unbind()

    if not bulk:
        write, dn, before, after = plans[0]
        entry = {key: value for key, value in after.items() if key != "password"}
        return dict(changed=bool(write), dn=dn, entry=entry, diff=dict(before=before, after=after))

    changed = [(user["address"], plan) for user, plan in zip(users, plans) if plan[0]]
    ops = [plan[0].op for _, plan in changed]
    summary = dict(created=ops.count("add"), updated=ops.count("modify"), removed=ops.count("delete"),
                   unchanged=len(users) - len(ops), changed_addresses=[address for address, _ in changed])
    diff = dict(before={address: plan[2] for address, plan in changed},
                after={address: plan[3] for address, plan in changed})
    return dict(changed=bool(changed), summary=summary, diff=diff)


def main():
    argument_spec = dict(
        user_options(False),
        mailbox_hosts=dict(type="list", elements="str"),
        unset_checks=dict(type="str", choices=["keep", "domain_default"], default="keep"),
        repick_mailbox_host=dict(type="bool", default=False),
        users=dict(type="list", elements="dict", options=user_options(True)),
    )
    run_directory_module(argument_spec, "address", "users", run)


if __name__ == "__main__":
    main()
