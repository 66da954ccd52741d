#!/usr/bin/python
# -*- coding: utf-8 -*-

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mail_domain
short_description: Manage hosted mail domains in the platform's OpenLDAP directory
description:
  - Creates, updates and removes hosted domains stored as C(ou=<domain>,ou=domains,<base_dn>) with
    the object classes C(organizationalUnit) and C(ispmailDomain).
  - Only the options given are enforced on an existing domain; an option left out keeps the value
    in LDAP. A new domain gets V(false) for O(spam_check) and O(virus_check) unless they are given.
  - A domain that still has users is never removed; the module fails and names the number of users.
  - All input is validated before the first write. The bulk form O(domains) reads the tree with one
    paged search.
version_added: "1.0.0"
author: ISP mail platform team
requirements:
  - ldap3 (Python library) on the host that runs the module
options:
  name:
    description:
      - The domain, stored in lower case. Mutually exclusive with O(domains); one of the two is required.
    type: str
  spam_check:
    description: Spam check default for users of the domain that do not set their own.
    type: bool
  virus_check:
    description: Virus check default for users of the domain that do not set their own.
    type: bool
  spam_subject_tag:
    description:
      - Put in front of the subject of spam for the domain's users with the spam check (UTF-8, at most 64 characters).
      - V("") removes it, so the spamcheck hosts' default tag applies.
    type: str
  virus_notice:
    description: The notice sent when a virus is found. Keys left out keep their value.
    type: dict
    suboptions:
      from:
        description: Sender address of the notice.
        type: str
      subject:
        description: Subject (UTF-8).
        type: str
      body:
        description: Body text (UTF-8).
        type: str
      notify_sender:
        description: Also send the notice to the sender of the infected mail.
        type: bool
  keyword_filters:
    description:
      - Operator keyword filters of the domain, stored as canonical JSON values. V([]) removes all.
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
        description: One of V(discard), V(tag) or V(hold).
        type: str
        required: true
  migration:
    description: State of the domain's migration from the legacy system. Keys left out keep their value.
    type: dict
    suboptions:
      state:
        description:
          - Migration phase (C(playbooks/migrate_domain.yml)). V(legacy) and V(syncing) - the legacy
            host serves the domain and the gateways relay its mail there; V(cutover) - its mail waits
            in the gateways' queues; V(migrated) - the mailbox servers serve it, a rollback is still
            possible; V(done) - the legacy host is no longer used.
        type: str
        choices: [legacy, syncing, cutover, migrated, done]
      legacy_host:
        description: Legacy host that serves or last served the domain.
        type: str
  state:
    description: V(absent) removes the domain; it fails while the domain still has users.
    type: str
    choices: [present, absent]
    default: present
  domains:
    description:
      - Bulk form, instead of O(name); a list of domains with the per-domain keys O(name),
        O(spam_check), O(virus_check), O(virus_notice), O(keyword_filters), O(migration) and O(state).
      - A key an item leaves unset takes the value of the same option at the top level.
      - Domains in LDAP but not in the list are left alone.
    type: list
    elements: dict
extends_documentation_fragment:
  - ispmail_ldap
"""

EXAMPLES = r"""
- name: Host a domain with virus checks on by default
  mail_domain:
    base_dn: dc=ispmail,dc=test
    name: example.com
    virus_check: true
    virus_notice:
      from: postmaster@example.com
      subject: ウイルスを検出しました
      body: 添付ファイルからウイルスが検出されたため削除しました。
      notify_sender: false
    keyword_filters:
      - {header: Subject, contains: "未承諾広告", action: tag}
    migration:
      state: syncing
      legacy_host: qmail01.example.net

- name: Apply all domains
  mail_domain:
    base_dn: dc=ispmail,dc=test
    domains: "{{ ispmail_domains }}"
"""

RETURN = r"""
dn:
  description: DN of the domain (single form).
  returned: single form
  type: str
  sample: ou=example.com,ou=domains,dc=ispmail,dc=test
entry:
  description: The domain as stored after the run; V({}) when absent.
  returned: single form
  type: dict
  sample:
    name: example.com
    spam_check: false
    virus_check: true
    virus_notice: {from: postmaster@example.com, subject: Virus found, body: "...", notify_sender: false}
    keyword_filters: [{action: tag, contains: "未承諾広告", header: Subject}]
    migration: {state: syncing, legacy_host: qmail01.example.net}
summary:
  description:
    - Counts of the bulk form and the entries that changed. (Not called C(results), which Ansible
      reserves for loops and renames.)
  returned: bulk form
  type: dict
  sample: {created: 1, updated: 0, removed: 0, unchanged: 41, changed_domains: [example.org]}
"""

from ansible.module_utils.ispmail_ldap import (
    DOMAIN_FILTER_ACTIONS, Attr, IspmailError, Write, apply_to_attrs, apply_writes, attribute_changes,
    canonical_keyword_filters, connect, domain_dn, domains_dn, encode, entry_view, find_duplicates,
    merge_item_defaults, run_directory_module, search_subtree, validate_address, validate_domain)

DOMAIN_ATTRS = {
    "name": Attr("ispmailDomainName", "ci"),
    "spam_check": Attr("ispmailSpamCheck", "bool"),
    "virus_check": Attr("ispmailVirusCheck", "bool"),
    "spam_subject_tag": Attr("ispmailSpamTag", "text"),
    "virus_notice.from": Attr("ispmailVirusNoticeFrom", "ci"),
    "virus_notice.subject": Attr("ispmailVirusNoticeSubject", "text"),
    "virus_notice.body": Attr("ispmailVirusNoticeBody", "text"),
    "virus_notice.notify_sender": Attr("ispmailVirusNotifySender", "bool"),
    "keyword_filters": Attr("ispmailKeywordFilter", "filters"),
    "migration.state": Attr("ispmailMigrationState", "ci"),
    "migration.legacy_host": Attr("ispmailLegacyHost", "ci"),
}
READ_ATTRIBUTES = ["objectClass"] + [attr.name for attr in DOMAIN_ATTRS.values()]


def domain_options(item):
    """Per-domain options; inside a domains item they have no defaults so the top level can fill them."""
    return dict(
        name=dict(type="str", required=item),
        spam_check=dict(type="bool"),
        virus_check=dict(type="bool"),
        spam_subject_tag=dict(type="str"),
        virus_notice=dict(type="dict", options={
            "from": dict(type="str"),
            "subject": dict(type="str"),
            "body": dict(type="str"),
            "notify_sender": dict(type="bool"),
        }),
        keyword_filters=dict(type="list", elements="dict", options=dict(
            header=dict(type="str", required=True),
            contains=dict(type="str", required=True),
            action=dict(type="str", required=True),
        )),
        migration=dict(type="dict", options=dict(
            state=dict(type="str", choices=["legacy", "syncing", "cutover", "migrated", "done"]),
            legacy_host=dict(type="str"),
        )),
        state=dict(type="str", choices=["present", "absent"], default=None if item else "present"),
    )


PER_DOMAIN_KEYS = tuple(domain_options(False))


def desired_settings(item, field):
    """(name, state, {option: value}) for the options given, validated and canonical."""
    name = validate_domain(item["name"], f"{field}name")
    desired = {key: item[key] for key in ("spam_check", "virus_check") if item[key] is not None}
    for group in ("virus_notice", "migration"):
        for key, value in (item[group] or {}).items():
            if value is not None:
                desired[f"{group}.{key}"] = value
    tag = item["spam_subject_tag"]
    if tag is not None:
        if len(tag) > 64 or any(char in tag for char in "\r\n"):
            raise IspmailError(f"{field}spam_subject_tag: at most 64 characters on one line, got {tag!r}")
        desired["spam_subject_tag"] = tag or None
    if "virus_notice.from" in desired:
        desired["virus_notice.from"] = validate_address(desired["virus_notice.from"], f"{field}virus_notice.from")
    filters = canonical_keyword_filters(item["keyword_filters"], DOMAIN_FILTER_ACTIONS, f"{field}keyword_filters")
    if filters is not None:
        desired["keyword_filters"] = filters
    return name, item["state"], desired


def plan_domain(name, state, desired, current, user_count, base_dn):
    """(write or None, dn, before, after) for one domain; raises before anything is written."""
    if state == "absent":
        if current is None:
            return None, None, {}, {}
        if user_count:
            raise IspmailError(f"cannot remove domain {name}: it still has {user_count} user(s); "
                               "remove them first (nothing was deleted)")
        return Write("delete", current[0], {}), current[0], entry_view(DOMAIN_ATTRS, current[1]), {}

    if current is None:
        desired = dict({"spam_check": False, "virus_check": False}, **desired, name=name)
        attrs = {DOMAIN_ATTRS[key].name: encode(DOMAIN_ATTRS[key].kind, value) for key, value in desired.items()}
        attrs.update(objectClass=["organizationalUnit", "ispmailDomain"], ou=[name])
        dn = domain_dn(name, base_dn)
        after = entry_view(DOMAIN_ATTRS, {key.lower(): values for key, values in attrs.items()})
        return Write("add", dn, attrs), dn, {}, after

    dn, attrs = current
    changes = attribute_changes(DOMAIN_ATTRS, attrs, desired)
    before = entry_view(DOMAIN_ATTRS, attrs)
    after = entry_view(DOMAIN_ATTRS, apply_to_attrs(attrs, changes))
    return (Write("modify", dn, changes) if changes else None), dn, before, after


def index_entries(entries):
    """(dn, attrs) of domains by name, and the number of entries below each domain DN."""
    domains = {}
    for dn, attrs in entries:
        if "ispmaildomain" in {value.lower() for value in attrs.get("objectclass", [])}:
            for name in attrs.get("ispmaildomainname", []):
                domains[name.lower()] = (dn, attrs)
    children = {}
    for dn, _ in entries:
        parent = dn.partition(",")[2].lower()
        children[parent] = children.get(parent, 0) + 1
    return domains, children


def run(module):
    params = module.params
    bulk = params["domains"] is not None
    if bulk:
        items = [(merge_item_defaults(item, params, PER_DOMAIN_KEYS), f"domains[{index}].")
                 for index, item in enumerate(params["domains"])]
    else:
        items = [({key: params[key] for key in PER_DOMAIN_KEYS}, "")]
    wanted = [desired_settings(item, field) for item, field in items]
    duplicates = find_duplicates(name for name, _, _ in wanted)
    if duplicates:
        raise IspmailError(f"domains: listed more than once: {', '.join(duplicates)}")

    base_dn = params["base_dn"]
    search_base = domains_dn(base_dn) if bulk else domain_dn(wanted[0][0], base_dn)
    conn = connect(params)
    try:
        # Users come back too (with no attributes asked for) so that removals can count them.
        entries = search_subtree(conn, search_base, "(|(objectClass=ispmailDomain)(objectClass=ispmailUser))",
                                 READ_ATTRIBUTES)
        existing, children = index_entries(entries)
        plans = []
        for name, state, desired in wanted:
            current = existing.get(name)
            user_count = children.get(current[0].lower(), 0) if current else 0
            plans.append(plan_domain(name, state, desired, current, user_count, base_dn))
        writes = [write for write, _, _, _ in plans if write]
        if writes and not module.check_mode:
            apply_writes(conn, writes, params["server_uri"])
    finally:
        conn.unbind()

    if not bulk:
        write, dn, before, after = plans[0]
        return dict(changed=bool(write), dn=dn, entry=after, diff=dict(before=before, after=after))

    changed = [(name, plan) for (name, _, _), plan in zip(wanted, plans) if plan[0]]
    ops = [plan[0].op for _, plan in changed]
    summary = dict(created=ops.count("add"), updated=ops.count("modify"), removed=ops.count("delete"),
                   unchanged=len(wanted) - len(ops), changed_domains=[name for name, _ in changed])
    diff = dict(before={name: plan[2] for name, plan in changed}, after={name: plan[3] for name, plan in changed})
    return dict(changed=bool(changed), summary=summary, diff=diff)


def main():
    argument_spec = dict(domain_options(False), domains=dict(type="list", elements="dict", options=domain_options(True)))
    run_directory_module(argument_spec, "name", "domains", run)


if __name__ == "__main__":
    main()
