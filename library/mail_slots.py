#!/usr/bin/python
# -*- coding: utf-8 -*-

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mail_slots
short_description: Create the mailbox take-over map in the platform's OpenLDAP directory
description:
  - Creates the map of decision 0010 under C(ou=slots,<base_dn>) where it is missing, and never
    changes an existing entry. A slot entry C(cn=<n>) names the server that holds it now
    (C(ispmailMailboxHost)), its home (C(ispmailSlotHome)) and an epoch; a server entry
    C(cn=<server>) collects the gateways' down votes. The take-over agents change holders and
    votes; this module only fills in what is not there.
  - A new slot's home and first holder is picked from O(servers) by rendezvous hashing of the
    slot number, so every server is home to about as many slots.
  - Users with a mailbox server that is the home of slots and no slot yet get one of that
    server's slots (the same pick as M(mail_user)), so existing directories are converted without
    moving anyone.
  - The number of slots is fixed once the map exists; a server added later has no home slots and
    its users stay pinned (C(ispmailMailboxHost) only) until the map is rebalanced.
version_added: "1.0.0"
author: ISP mail platform team
requirements:
  - ldap3 (Python library) on the host that runs the module
options:
  servers:
    description: Names of the mailbox servers, as users' C(ispmailMailboxHost) names them.
    type: list
    elements: str
    required: true
  slot_count:
    description: Number of slots of a new map; needed to create one. Must match an existing map.
    type: int
  epoch_floor:
    description:
      - Raise the epoch of every slot below this number to it (the holders stay). For a restore
        of the directory (C(playbooks/restore.yml)), with the current time. A restored map repeats
        old epochs, and a mailbox server reopens at once a slot it held at the same epoch; with a
        new epoch every server waits for the lease first (decision 0010).
    type: int
extends_documentation_fragment:
  - ispmail_ldap
"""

EXAMPLES = r"""
- name: Create the take-over map and give existing users a slot
  mail_slots:
    base_dn: dc=ispmail,dc=test
    servers: [mbox01, mbox02, mbox03]
    slot_count: 256

- name: After a restore, make every mailbox server wait for its lease
  mail_slots:
    base_dn: dc=ispmail,dc=test
    servers: [mbox01, mbox02, mbox03]
    epoch_floor: "{{ now(utc=true).timestamp() | int }}"
"""

RETURN = r"""
summary:
  description: What was created, and how many slots each server is home to and holds now.
  returned: always
  type: dict
  sample: {slots_created: 256, servers_created: 3, users_given_slot: 5000, epochs_raised: 0,
           home: {mbox01: 85, mbox02: 86, mbox03: 85}, holder: {mbox01: 85, mbox02: 86, mbox03: 85},
           servers_without_slots: []}
"""

import re

from ansible.module_utils.ispmail_ldap import (
    IspmailError, Write, apply_writes, connect, domains_dn, pick_mailbox_host, pick_slot, run_directory_module,
    search_subtree, slot_dn, slots_dn)

SERVER_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


def plan_map(servers, slot_count, existing, base_dn):
    """Writes that create the missing map entries; existing is [(dn, attrs)] under ou=slots."""
    numbers, server_names, map_exists = set(), set(), False
    for dn, attrs in existing:
        classes = {value.lower() for value in attrs.get("objectclass", [])}
        if dn.lower() == slots_dn(base_dn).lower():
            map_exists = True
        elif "ispmailmailboxslot" in classes:
            numbers.add(int(attrs["cn"][0]))
        elif "ispmailmailboxserver" in classes:
            server_names.add(attrs["cn"][0].lower())
    if slot_count is None:
        if not numbers:
            raise IspmailError("slot_count: needed to create the map (the directory has none)")
        slot_count = max(numbers) + 1
    if numbers and max(numbers) >= slot_count:
        raise IspmailError(f"slot_count: the map in LDAP has slot {max(numbers)}; a map's size cannot change "
                           f"(got {slot_count})")
    writes = [] if map_exists else [Write("add", slots_dn(base_dn), {"objectClass": ["organizationalUnit"],
                                                                      "ou": ["slots"]})]
    for number in range(slot_count):
        if number not in numbers:
            home = pick_mailbox_host(str(number), servers)
            writes.append(Write("add", slot_dn(number, base_dn), {
                "objectClass": ["ispmailMailboxSlot"], "cn": [str(number)], "ispmailMailboxHost": [home],
                "ispmailSlotHome": [home], "ispmailSlotEpoch": ["1"]}))
    for server in servers:
        if server not in server_names:
            writes.append(Write("add", f"cn={server},{slots_dn(base_dn)}",
                                {"objectClass": ["ispmailMailboxServer"], "cn": [server]}))
    return writes


def slot_homes_after(existing, writes):
    """({home: [numbers]}, {holder: count}) of the map once writes are applied."""
    homes, holders = {}, {}
    slots = [attrs for _, attrs in existing if "ispmailmailboxslot" in
             {value.lower() for value in attrs.get("objectclass", [])}]
    slots += [{name.lower(): values for name, values in write.attrs.items()} for write in writes
              if write.attrs.get("objectClass") == ["ispmailMailboxSlot"]]
    for attrs in slots:
        number = int(attrs["cn"][0])
        homes.setdefault(attrs["ispmailslothome"][0].lower(), []).append(number)
        holder = attrs["ispmailmailboxhost"][0].lower()
        holders[holder] = holders.get(holder, 0) + 1
    return {home: sorted(numbers) for home, numbers in homes.items()}, holders


def plan_users(users, slot_homes, base_dn):
    """Modifies that give each user of a server with home slots, and no slot, one of them."""
    writes = []
    for dn, attrs in users:
        host = (attrs.get("ispmailmailboxhost") or [""])[0]
        slot = pick_slot(attrs["mail"][0], host, slot_homes, base_dn) if host else None
        if slot:
            writes.append(Write("modify", dn, {"ispmailMailboxSlot": [slot]}))
    return writes


def plan_epochs(existing, floor):
    """Modifies that raise every existing slot's epoch below floor to it."""
    if floor is None:
        return []
    return [Write("modify", dn, {"ispmailSlotEpoch": [str(floor)]}) for dn, attrs in existing
            if attrs.get("ispmailslotepoch") and int(attrs["ispmailslotepoch"][0]) < floor]


def run(module):
    params = module.params
    servers = [name.strip().lower() for name in params["servers"]]
    bad = [name for name in servers if not SERVER_NAME.fullmatch(name)]
    if not servers or bad:
        raise IspmailError(f"servers: give the mailbox servers' names (got {params['servers']!r})")
    if len(set(servers)) != len(servers):
        raise IspmailError(f"servers: listed more than once: {params['servers']!r}")
    if params["slot_count"] is not None and not 1 <= params["slot_count"] <= 4096:
        raise IspmailError(f"slot_count: must be 1..4096 (got {params['slot_count']})")
    base_dn = params["base_dn"]

    conn = connect(params)
    try:
        existing = search_subtree(conn, slots_dn(base_dn), "(objectClass=*)",
                                  ["objectClass", "cn", "ispmailMailboxHost", "ispmailSlotHome", "ispmailSlotEpoch"])
        map_writes = plan_map(servers, params["slot_count"], existing, base_dn)
        slot_homes, holders = slot_homes_after(existing, map_writes)
        users = search_subtree(conn, domains_dn(base_dn),
                               "(&(objectClass=ispmailUser)(ispmailMailboxHost=*)(!(ispmailMailboxSlot=*)))",
                               ["mail", "ispmailMailboxHost"])
        user_writes = plan_users(users, slot_homes, base_dn)
        epoch_writes = plan_epochs(existing, params["epoch_floor"])
        if not module.check_mode:
            apply_writes(conn, map_writes + user_writes + epoch_writes, params["server_uri"])
    finally:
        conn.unbind()

    summary = dict(
        slots_created=sum(1 for w in map_writes if w.attrs.get("objectClass") == ["ispmailMailboxSlot"]),
        servers_created=sum(1 for w in map_writes if w.attrs.get("objectClass") == ["ispmailMailboxServer"]),
        users_given_slot=len(user_writes),
        home={home: len(numbers) for home, numbers in sorted(slot_homes.items())},
        holder=dict(sorted(holders.items())),
        servers_without_slots=[name for name in servers if name not in slot_homes],
        epochs_raised=len(epoch_writes),
    )
    return dict(changed=bool(map_writes or user_writes or epoch_writes), summary=summary)


def main():
    run_directory_module(dict(servers=dict(type="list", elements="str", required=True),
                              slot_count=dict(type="int"), epoch_floor=dict(type="int")),
                         None, None, run)


if __name__ == "__main__":
    main()
