#!/usr/bin/python
# -*- coding: utf-8 -*-

from __future__ import annotations

DOCUMENTATION = r"""
---
module: apt_present
short_description: Install Debian packages, asking dpkg first whether anything is missing
description:
  - Installs O(name) with M(ansible.builtin.apt) (C(state=present)) only when dpkg does not list
    every one of them as installed, or when O(update_cache) is asked for and the package lists are
    older than O(cache_valid_time). Otherwise it returns unchanged without opening apt's cache.
  - The reason is time. M(ansible.builtin.apt) opens the whole package cache on every call,
    also when nothing is to be done; on the lab (a dozen hosts on two cores) that was 10 s per task,
    about 110 s of a run that changes nothing. C(dpkg-query) answers the same question in
    milliseconds.
  - This module is the read-only check (it changes nothing, also outside check mode); the action
    plugin of the same name runs it and then M(ansible.builtin.apt) when something is missing, so
    installs, check mode and diffs are apt's own.
version_added: "1.0.0"
author: ISP mail platform team
options:
  name:
    description: Package names, as dpkg knows them (no versions, wildcards, architectures or files).
    type: list
    elements: str
    required: true
  update_cache:
    description: Refresh the package lists first when they are older than O(cache_valid_time).
    type: bool
    default: false
  cache_valid_time:
    description: Seconds the package lists count as fresh (0, with O(update_cache), always refreshes).
    type: int
    default: 0
  install_recommends:
    description: Passed to M(ansible.builtin.apt) when it installs; unset keeps apt's setting.
    type: bool
notes:
  - A virtual package (one that other packages provide) is never listed by dpkg as installed, so a
    task naming one always runs M(ansible.builtin.apt); name the real package instead.
seealso:
  - module: ansible.builtin.apt
"""

EXAMPLES = r"""
- name: Install nftables
  apt_present:
    name: nftables

- name: Install base packages, refreshing the lists once a day
  apt_present:
    name: [chrony, rsyslog]
    update_cache: true
    cache_valid_time: 86400
"""

RETURN = r"""
missing:
  description: The packages dpkg does not list as installed (what M(ansible.builtin.apt) was given).
  returned: always
  type: list
  elements: str
  sample: [nftables]
cache_stale:
  description: Whether O(update_cache) was asked for and the package lists are older than O(cache_valid_time).
  returned: always
  type: bool
"""

import os
import re
import time

from ansible.module_utils.basic import AnsibleModule

# Debian policy 5.6.1: lower case letters, digits, + - . ; at least two characters.
PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
# Where ansible.builtin.apt looks for the time of the last `apt-get update`, in its order.
CACHE_STAMPS = ("/var/lib/apt/periodic/update-success-stamp", "/var/lib/apt/lists")


def installed(module, names):
    """The names dpkg lists as installed and configured (status ii, no error flag)."""
    rc, out, err = module.run_command(["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\n", "--"] + names)
    # rc 1: some name is unknown to dpkg (never installed); the others are still listed.
    if rc not in (0, 1):
        module.fail_json(msg=f"dpkg-query failed: {err.strip() or out.strip()}", rc=rc)
    found = (line.split("\t") for line in out.splitlines() if "\t" in line)
    return {package for package, status in found if status.rstrip() == "ii"}


def cache_age(now):
    for path in CACHE_STAMPS:
        if os.path.exists(path):
            return now - os.stat(path).st_mtime
    return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="list", elements="str", required=True),
            update_cache=dict(type="bool", default=False),
            cache_valid_time=dict(type="int", default=0),
            install_recommends=dict(type="bool"),
        ),
        supports_check_mode=True,
    )
    names = module.params["name"]
    bad = [name for name in names if not PACKAGE.fullmatch(name)]
    if not names or bad:
        module.fail_json(msg=f"name: package names only, as dpkg knows them (no versions, wildcards, "
                             f"architectures or files); got {bad or names!r}")
    if module.params["cache_valid_time"] < 0:
        module.fail_json(msg=f"cache_valid_time must be 0 or more, got {module.params['cache_valid_time']}")
    have = installed(module, names)
    age = cache_age(time.time())
    stale = module.params["update_cache"] and (age is None or module.params["cache_valid_time"] == 0
                                               or age > module.params["cache_valid_time"])
    module.exit_json(changed=False, missing=[name for name in names if name not in have], cache_stale=bool(stale))


if __name__ == "__main__":
    main()
