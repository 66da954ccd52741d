#!/usr/bin/python
# -*- coding: utf-8 -*-

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lb_pool_ratio
short_description: Split identical gateways between the SMTP and the POP/IMAP pool of HAProxy at run time
description:
  - The gateways are identical; each serves either the SMTP pool (submission, POP before SMTP) or the
    POP/IMAP pool (POP3, IMAP, ManageSieve). O(ratio) says how many go to each. The first servers of
    O(servers) serve SMTP, the rest POP/IMAP, so changing V(6:2) to V(5:3) moves exactly one server.
  - Every server is listed in every backend of both pools; a server outside a pool is in maintenance
    there. A moving server is first put in C(drain) in its old pool (its sessions go on, it gets no
    new ones), the module waits until those sessions have ended or O(drain_timeout) has passed, then
    sets it to maintenance there (open sessions are not cut) and ready in its new pool.
  - Works through the HAProxy runtime API (admin socket). The role C(loadbalancer) renders the same
    split into haproxy.cfg from the same ratio, so a reload keeps it.
  - All input is checked against the running HAProxy before the first change.
version_added: "1.0.0"
author: ISP mail platform team
options:
  ratio:
    description: V(SMTP:POP), for example V(5:3). Both at least 1; they add up to the number of O(servers).
    type: str
    required: true
  servers:
    description: The gateway servers, in assignment order (the same order the role uses).
    type: list
    elements: str
    required: true
  pools:
    description: The HAProxy backends of each pool.
    type: dict
    required: true
    suboptions:
      smtp:
        description: Backends of the SMTP pool.
        type: list
        elements: str
        required: true
      pop:
        description: Backends of the POP/IMAP pool.
        type: list
        elements: str
        required: true
  socket:
    description: HAProxy admin socket (C(stats socket ... level admin)).
    type: path
    default: /run/haproxy/admin.sock
  drain_timeout:
    description: Seconds to wait for a moving server's sessions to end before it is moved anyway.
    type: int
    default: 300
  poll_interval:
    description: Seconds between session counts while draining.
    type: float
    default: 1.0
notes:
  - Supports check mode (reports the move without touching HAProxy) and diff (assignment before and after).
"""

EXAMPLES = r"""
- name: Move one gateway from SMTP to POP/IMAP (6:2 -> 5:3)
  lb_pool_ratio:
    ratio: "5:3"
    servers: [gw01, gw02, gw03, gw04, gw05, gw06, gw07, gw08]
    pools:
      smtp: [submission, submissions, pop_before_smtp]
      pop: [pop3, pop3s, imap, imaps, sieve]
"""

RETURN = r"""
before:
  description: Assignment found in HAProxy (servers whose state is inconsistent are listed under C(mixed)).
  returned: always
  type: dict
  sample: {"smtp": ["gw01", "gw02"], "pop": ["gw03"], "mixed": []}
after:
  description: Assignment after the change (in check mode, the one that would be applied).
  returned: always
  type: dict
  sample: {"smtp": ["gw01"], "pop": ["gw02", "gw03"], "mixed": []}
moved:
  description: Servers that changed pool, with the seconds their drain took (or V(timeout)).
  returned: always
  type: dict
  sample: {"gw02": 3.1}
"""

import socket
import time

from ansible.module_utils.basic import AnsibleModule

# srv_admin_state bits that mean "maintenance": forced, inherited, resolver, health. A
# `disabled` server line starts as forced + configured (0x04); `state ready` clears only
# the forced bit, so 0x04 alone is a configured-off server that now serves.
MAINT_FLAGS = 0x01 | 0x02 | 0x20 | 0x40
DRAIN_FLAGS = 0x08 | 0x10


class PoolError(Exception):
    """A clear, user-facing failure."""


def parse_ratio(ratio, count):
    """Return (smtp, pop) from "a:b"; both >= 1 and a + b == count."""
    parts = str(ratio).split(":")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise PoolError(f"ratio must look like 5:3 (SMTP:POP servers), not '{ratio}'")
    smtp, pop = (int(part) for part in parts)
    if smtp < 1 or pop < 1:
        raise PoolError(f"ratio {ratio}: each pool needs at least one server")
    if smtp + pop != count:
        raise PoolError(f"ratio {ratio} adds up to {smtp + pop}, but there are {count} servers")
    return smtp, pop


def split(servers, ratio):
    """The stable assignment: the first servers serve SMTP, the rest POP/IMAP."""
    smtp, _ = parse_ratio(ratio, len(servers))
    return {"smtp": list(servers[:smtp]), "pop": list(servers[smtp:])}


class RuntimeApi:
    """One command per connection on HAProxy's admin socket."""

    def __init__(self, path):
        self.path = path

    def command(self, text):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(10)
                conn.connect(self.path)
                conn.sendall(text.encode() + b"\n")
                chunks = []
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except OSError as exc:
            raise PoolError(f"cannot talk to HAProxy on {self.path}: {exc}") from exc
        return b"".join(chunks).decode()

    def servers(self, backend):
        """{server: (admin_state, current sessions)} of one backend."""
        state = self.command(f"show servers state {backend}")
        if "Can't find backend" in state or "No such backend" in state:
            raise PoolError(f"HAProxy has no backend '{backend}'")
        header, rows = None, {}
        for line in state.splitlines():
            if line.startswith("# be_id"):
                header = line[2:].split()
            elif header and line and not line.startswith("#") and line[0].isdigit():
                fields = dict(zip(header, line.split()))
                rows[fields["srv_name"]] = int(fields["srv_admin_state"])
        if header is None:
            raise PoolError(f"unexpected answer from HAProxy for backend '{backend}': {state.strip()[:200]}")
        sessions = self.sessions(backend)
        return {name: (admin, sessions.get(name, 0)) for name, admin in rows.items()}

    def sessions(self, backend):
        """{server: current sessions} from `show stat`."""
        out = self.command("show stat")
        lines = out.splitlines()
        if not lines or not lines[0].startswith("# "):
            raise PoolError(f"unexpected answer from HAProxy to show stat: {out.strip()[:200]}")
        header = lines[0][2:].split(",")
        result = {}
        for line in lines[1:]:
            fields = dict(zip(header, line.split(",")))
            if fields.get("pxname") == backend and fields.get("svname") not in ("BACKEND", "FRONTEND"):
                result[fields["svname"]] = int(fields.get("scur") or 0)
        return result

    def set_state(self, backend, server, state):
        out = self.command(f"set server {backend}/{server} state {state}").strip()
        if out:
            raise PoolError(f"HAProxy refused 'set server {backend}/{server} state {state}': {out}")


def current_assignment(states, servers, pools):
    """Which pool each server serves now, from {backend: {server: (admin, sessions)}}."""
    result = {"smtp": [], "pop": [], "mixed": []}
    for server in servers:
        serving = {pool: [not states[backend][server][0] & MAINT_FLAGS for backend in backends]
                   for pool, backends in pools.items()}
        in_smtp, in_pop = all(serving["smtp"]), all(serving["pop"])
        if in_smtp and not any(serving["pop"]):
            result["smtp"].append(server)
        elif in_pop and not any(serving["smtp"]):
            result["pop"].append(server)
        else:
            result["mixed"].append(server)
    return result


def read_states(api, servers, pools):
    """Validate that every backend lists every server; return their states."""
    states = {}
    for backend in [b for backends in pools.values() for b in backends]:
        states[backend] = api.servers(backend)
        missing = [server for server in servers if server not in states[backend]]
        if missing:
            raise PoolError(f"backend '{backend}' has no server {', '.join(missing)} "
                            f"(it lists {', '.join(sorted(states[backend])) or 'none'})")
    return states


def validate(params):
    servers, pools = params["servers"], params["pools"]
    if not servers:
        raise PoolError("servers must not be empty")
    duplicates = sorted({s for s in servers if servers.count(s) > 1})
    if duplicates:
        raise PoolError(f"servers are listed twice: {', '.join(duplicates)}")
    if not pools["smtp"] or not pools["pop"]:
        raise PoolError("pools.smtp and pools.pop each need at least one backend")
    shared = set(pools["smtp"]) & set(pools["pop"])
    if shared:
        raise PoolError(f"backends in both pools: {', '.join(sorted(shared))}")
    if params["drain_timeout"] < 0:
        raise PoolError("drain_timeout must be 0 or more seconds")
    return split(servers, params["ratio"])


def drain_and_move(api, moving, wanted, pools, timeout, interval):
    """Drain each moving server in its old pool, wait, then serve the new pool."""
    old_pool = {server: ("pop" if pool == "smtp" else "smtp") for pool, members in wanted.items()
                for server in members if server in moving}
    for server, pool in old_pool.items():
        for backend in pools[pool]:
            api.set_state(backend, server, "drain")
    started, waited = time.monotonic(), {}
    pending = set(old_pool)
    while pending:
        counts = {backend: api.sessions(backend) for backend in set(b for p in pools.values() for b in p)}
        for server in sorted(pending):
            if all(counts[backend].get(server, 0) == 0 for backend in pools[old_pool[server]]):
                waited[server] = round(time.monotonic() - started, 1)
                pending.discard(server)
        if pending and time.monotonic() - started >= timeout:
            waited.update({server: "timeout" for server in pending})
            break
        if pending:
            time.sleep(interval)
    for server, pool in old_pool.items():
        new_pool = "pop" if pool == "smtp" else "smtp"
        for backend in pools[pool]:
            api.set_state(backend, server, "maint")
        for backend in pools[new_pool]:
            api.set_state(backend, server, "ready")
    return waited


def run(module):
    params = module.params
    wanted = validate(params)
    api = RuntimeApi(params["socket"])
    states = read_states(api, params["servers"], params["pools"])
    before = current_assignment(states, params["servers"], params["pools"])
    after = dict(wanted, mixed=[])
    moving = [s for s in params["servers"] if s not in (before["smtp"] if s in wanted["smtp"] else before["pop"])]
    # Left draining in its own pool (an interrupted run): back to ready.
    draining = [(backend, server) for pool, members in wanted.items() for server in members if server not in moving
                for backend in params["pools"][pool] if states[backend][server][0] & DRAIN_FLAGS]
    result = {"changed": bool(moving or draining), "before": before, "after": after, "moved": {}}
    if module._diff:
        result["diff"] = {"before": {k: v for k, v in before.items() if v or k != "mixed"},
                          "after": wanted}
    if module.check_mode or not result["changed"]:
        result["moved"] = {server: None for server in moving}
        return result
    for backend, server in draining:
        api.set_state(backend, server, "ready")
    # Servers serving neither or both pools are not drained: they are set straight.
    clean = [s for s in moving if s not in before["mixed"]]
    result["moved"] = drain_and_move(api, clean, wanted, params["pools"], params["drain_timeout"],
                                     params["poll_interval"])
    for server in [s for s in moving if s in before["mixed"]]:
        pool = "smtp" if server in wanted["smtp"] else "pop"
        other = "pop" if pool == "smtp" else "smtp"
        for backend in params["pools"][other]:
            api.set_state(backend, server, "maint")
        for backend in params["pools"][pool]:
            api.set_state(backend, server, "ready")
        result["moved"][server] = 0.0
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ratio=dict(type="str", required=True),
            servers=dict(type="list", elements="str", required=True),
            pools=dict(type="dict", required=True, options=dict(
                smtp=dict(type="list", elements="str", required=True),
                pop=dict(type="list", elements="str", required=True),
            )),
            socket=dict(type="path", default="/run/haproxy/admin.sock"),
            drain_timeout=dict(type="int", default=300),
            poll_interval=dict(type="float", default=1.0),
        ),
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module))
    except PoolError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
