"""Capacity as an inventory input: from today's peak flow, a growth factor, the hardware
classes and the measured cost of each tier, how many servers each tier needs (N+R) and
the process limits its daemons need. Pure Python, no I/O; docs/capacity.md has the
formulas and a worked example.

    capacity_plan(today, tier_costs, hardware_classes, groups, growth_factor=10,
                  target_utilisation=0.6, redundancy=1, gateway_ratio=None, tuning=None)

returns {"ok", "reasons", "growth_factor", "flow", "tiers", "limits", "minimums"}:

  flow      the peak flow at the growth factor (per second), sessions, mail store size
  tiers     per tier (loadbalancer, spamcheck, gateway, mailbox): inventory group,
            hardware class, servers present and needed, the load of one server while
            `redundancy` servers are down, ok and the reasons when not
  limits    the role variables the flow needs on the servers present, rounded up to two
            significant figures and never below the software's own default
  minimums  the same limits before rounding and floors: an inventory override below one
            of these is too small for the flow (capacity_verdict says so)

    capacity_verdict(plan, hostvars, groups)

adds what the inventory overrides (a limit variable set in group_vars or host_vars
beats the model) and returns {"ok", "reasons", "lines"} for playbooks/capacity_check.yml.
"""

import math

from ansible.errors import AnsibleFilterError

TODAY_KEYS = (
    "messages_in_per_minute",      # peak, from the internet (the MX)
    "messages_out_per_minute",     # peak, from subscribers (submission, POP before SMTP)
    "message_size_kib",            # mean
    "recipients_per_message",      # mean, inbound
    "spam_check_share",            # share of recipients with a spam check contract, 0..1
    "virus_check_share",           # share of recipients with a virus check contract, 0..1
    "pop_imap_sessions",           # concurrent POP3/IMAP sessions at peak
    "pop_imap_session_seconds",    # mean length of one session
    "mailboxes",                   # count
    "mailbox_size_mib",            # mean
)
SHARES = ("spam_check_share", "virus_check_share")
COST_KEYS = (
    "loadbalancer_per_message",    # HAProxy, one proxied TCP connection (also a POP/IMAP session)
    "spamcheck_per_message",       # postscreen + edge + scan instance + rspamd
    "gateway_per_message",         # six Postfix instances + clamd
    "mailbox_per_message",         # one LMTP delivery to Maildir (with Sieve)
    "relay_per_session",           # one POP/IMAP session through the gateways' Dovecot proxy
    "mailbox_per_session",         # one POP/IMAP session on a mailbox server
)
HARDWARE_KEYS = ("cores", "memory_gib", "disk_gib")

# The model's constants; the inventory overrides any of them in capacity_tuning.
DEFAULT_TUNING = {
    # Little's law gives the mean number of busy processes; limits get this factor on top
    # (bursts within the peak minute, slow clients).
    "headroom": 2.0,
    # Share of memory and disk a tier may plan to use (the rest: page cache, logs, slack).
    "memory_utilisation": 0.8,
    "disk_utilisation": 0.8,
    # Seconds a message holds a process: an smtpd talking to a client on the internet or a
    # subscriber's line; one internal hop (an instance's smtpd/smtp or cleanup); one LMTP
    # delivery to Maildir on the shared store; the fixed milter waits (DESIGN.md 6).
    "client_smtp_seconds": 4.0,
    "internal_hop_seconds": 0.2,
    "lmtp_seconds": 0.3,
    "rspamd_wait_seconds": 0.05,
    "clamav_wait_seconds": 0.09,
    # Hours of flow a gateway or spamcheck host must queue on local disk while its next
    # hop is away.
    "queue_hours": 8,
    # Share of spamcheck_per_message spent in rspamd (sizes its workers).
    "rspamd_cpu_share": 0.5,
    # Memory: what a server of the tier uses before any flow (GiB: daemons, clamd twice
    # while it reloads its signatures, the LDAP replica), one busy Postfix process (MiB),
    # one concurrent POP/IMAP session (MiB) on the load balancer (buffers), the relay (a
    # proxying login process) and a mailbox server (imap/pop3 process).
    "base_memory_gib": {"loadbalancer": 0.5, "spamcheck": 2.0, "gateway": 3.0, "mailbox": 1.0},
    "postfix_process_mib": 4.0,
    "session_mib": {"loadbalancer": 0.05, "relay": 0.25, "mailbox": 1.0},
    # Disk a server uses before any queue (GiB).
    "base_disk_gib": 20,
}

# Each tier's inventory group, and which role variable sits on which group.
TIER_GROUPS = {"loadbalancer": "lb", "spamcheck": "spamcheck", "gateway": "gateway", "mailbox": "mailbox"}
LIMIT_GROUPS = {
    "loadbalancer_maxconn": "lb",
    "spamcheck_process_limit": "spamcheck",
    "spamcheck_rspamd_workers": "spamcheck",
    "postfix_gateway_process_limit": "gateway",
    "postfix_gateway_clamd_max_threads": "gateway",
    "mailbox_proxy_process_limit": "gateway",
    "mailbox_proxy_client_limit": "gateway",
    "mailbox_process_limit": "mailbox",
    "mailbox_client_limit": "mailbox",
}
# The software's own defaults: a derived limit never goes below them.
FLOORS = {
    "postfix_process_limit": 100,      # Postfix default_process_limit
    "clamd_max_threads": 12,           # Debian's clamd.conf
    "dovecot_process_limit": 100,      # Dovecot default_process_limit
    "dovecot_client_limit": 1000,      # Dovecot default_client_limit
    "haproxy_maxconn": 2000,
}
POSTFIX_INSTANCES = 6
SPAMCHECK_INSTANCES = 2
SEARCH_LIMIT = 1_000_000               # servers: beyond this the flow cannot be served


def _fail(message):
    raise AnsibleFilterError(message)


def _number(name, value, minimum=0.0, maximum=None, above=False, integer=False):
    """A number (or numeric text, as -e passes it) within bounds, or an error naming it."""
    if isinstance(value, bool) or value is None:
        _fail(f"{name} must be a number, not {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            _fail(f"{name} must be a number, not {value!r}")
    if not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        _fail(f"{name} must be a number, not {value!r}")
    if above and value <= minimum:
        _fail(f"{name} must be more than {minimum:g}, not {value!r}")
    if value < minimum:
        _fail(f"{name} must be at least {minimum:g}, not {value!r}")
    if maximum is not None and value > maximum:
        _fail(f"{name} must be at most {maximum:g}, not {value!r}")
    if integer:
        if value != int(value):
            _fail(f"{name} must be a whole number, not {value!r}")
        return int(value)
    return float(value)


def _mapping(name, value, keys):
    if not isinstance(value, dict):
        _fail(f"{name} must be a dict with {', '.join(keys)}, not {value!r}")
    missing = [key for key in keys if key not in value]
    if missing:
        _fail(f"{name} has no {', '.join(missing)}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        _fail(f"{name} has unknown keys: {', '.join(map(str, unknown))} (known: {', '.join(keys)})")
    return value


def _today(today):
    _mapping("capacity_today", today, TODAY_KEYS)
    result = {}
    for key in TODAY_KEYS:
        name = f"capacity_today.{key}"
        if key in SHARES:
            result[key] = _number(name, today[key], 0, 1)
        elif key == "recipients_per_message":
            result[key] = _number(name, today[key], 1)
        elif key == "pop_imap_session_seconds":
            result[key] = _number(name, today[key], 0, above=True)
        else:
            result[key] = _number(name, today[key])
    return result


def _costs(costs):
    _mapping("capacity_tier_costs", costs, COST_KEYS)
    return {key: _number(f"capacity_tier_costs.{key}", costs[key]) for key in COST_KEYS}


def _tuning(tuning):
    if tuning is None:
        tuning = {}
    if not isinstance(tuning, dict):
        _fail(f"capacity_tuning must be a dict, not {tuning!r}")
    unknown = sorted(set(tuning) - set(DEFAULT_TUNING))
    if unknown:
        _fail(f"capacity_tuning has unknown keys: {', '.join(map(str, unknown))}")
    result = {}
    for key, default in DEFAULT_TUNING.items():
        value = tuning.get(key, default)
        name = f"capacity_tuning.{key}"
        if isinstance(default, dict):
            if not isinstance(value, dict):
                _fail(f"{name} must be a dict, not {value!r}")
            unknown = sorted(set(value) - set(default))
            if unknown:
                _fail(f"{name} has unknown keys: {', '.join(map(str, unknown))}")
            result[key] = {sub: _number(f"{name}.{sub}", value.get(sub, subdefault))
                           for sub, subdefault in default.items()}
        elif key in ("memory_utilisation", "disk_utilisation", "rspamd_cpu_share"):
            result[key] = _number(name, value, 0, 1, above=True)
        elif key == "headroom":
            result[key] = _number(name, value, 1)
        else:
            result[key] = _number(name, value)
    return result


def _classes(classes):
    if not isinstance(classes, dict) or not classes:
        _fail(f"capacity_hardware_classes must be a non-empty dict of class name to "
              f"{', '.join(HARDWARE_KEYS)}, not {classes!r}")
    result = {}
    for name, facts in classes.items():
        if not isinstance(facts, dict):
            _fail(f"capacity_hardware_classes.{name} must be a dict, not {facts!r}")
        missing = [key for key in HARDWARE_KEYS if key not in facts]
        if missing:
            _fail(f"capacity_hardware_classes.{name} has no {', '.join(missing)}")
        unknown = sorted(set(facts) - set(HARDWARE_KEYS) - {"group"})
        if unknown:
            _fail(f"capacity_hardware_classes.{name} has unknown keys: {', '.join(map(str, unknown))}")
        entry = {key: _number(f"capacity_hardware_classes.{name}.{key}", facts[key], 0, above=True)
                 for key in HARDWARE_KEYS}
        entry["group"] = str(facts.get("group", name))
        result[str(name)] = entry
    return result


def _tier_hosts(groups, tier):
    hosts = (groups or {}).get(TIER_GROUPS[tier]) or []
    if not isinstance(hosts, (list, tuple)):
        _fail(f"groups.{TIER_GROUPS[tier]} must be a list of hosts, not {hosts!r}")
    return list(hosts)


def _tier_class(tier, hosts, classes, groups):
    """The tier's hardware class: the smallest (fewest cores) class of its hosts."""
    if not hosts:
        return None
    found = {}
    for host in hosts:
        mine = [name for name, facts in classes.items() if host in ((groups or {}).get(facts["group"]) or [])]
        if not mine:
            _fail(f"host {host} of tier {tier} (group {TIER_GROUPS[tier]}) is in no hardware class: "
                  f"capacity_hardware_classes has {', '.join(sorted(classes))}, found by the groups "
                  f"{', '.join(sorted(facts['group'] for facts in classes.values()))}")
        if len(mine) > 1:
            _fail(f"host {host} is in several hardware classes: {', '.join(sorted(mine))}")
        found[mine[0]] = classes[mine[0]]
    return min(found, key=lambda name: (found[name]["cores"], found[name]["memory_gib"], name))


def _ratio(ratio, gateways):
    parts = str(ratio).split(":")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        _fail(f"lb_gateway_ratio must look like 6:2 (SMTP:POP servers), not {ratio!r}")
    smtp, pop = (int(part) for part in parts)
    if smtp < 1 or pop < 1:
        _fail(f"lb_gateway_ratio {ratio}: each pool needs at least one gateway")
    if smtp + pop != gateways:
        _fail(f"lb_gateway_ratio {ratio} adds up to {smtp + pop}, but the inventory has {gateways} gateways")
    return smtp, pop


def _round_up(value, floor):
    """Two significant figures, rounded up; never below the floor."""
    value = max(float(value), float(floor))
    if value <= 0:
        return 0
    step = 10 ** max(0, int(math.floor(math.log10(value))) - 1)
    return int(math.ceil(value / step - 1e-9) * step)


def _servers_for(demands):
    """Servers one resource list needs: max over (demand, capacity of one server)."""
    needed = 1
    for demand, capacity in demands:
        if demand <= 0:
            continue
        if capacity <= 0:
            return None
        needed = max(needed, math.ceil(demand / capacity - 1e-9))
    return needed


def _flow(today, growth):
    flow = {
        "messages_in_per_second": today["messages_in_per_minute"] * growth / 60,
        "messages_out_per_second": today["messages_out_per_minute"] * growth / 60,
        "sessions": today["pop_imap_sessions"] * growth,
    }
    flow["messages_per_second"] = flow["messages_in_per_second"] + flow["messages_out_per_second"]
    flow["deliveries_per_second"] = flow["messages_in_per_second"] * today["recipients_per_message"]
    flow["sessions_per_second"] = flow["sessions"] / today["pop_imap_session_seconds"]
    flow["mail_store_gib"] = today["mailboxes"] * growth * today["mailbox_size_mib"] / 1024
    # A message is checked when at least one of its recipients has the contract.
    recipients = today["recipients_per_message"]
    flow["spam_checked_share"] = 1 - (1 - today["spam_check_share"]) ** recipients
    flow["virus_checked_share"] = 1 - (1 - today["virus_check_share"]) ** recipients
    # rspamd is asked once per recipient with the contract (inbound).
    flow["spam_checks_per_message"] = max(1.0, recipients * today["spam_check_share"])
    return flow


def _queue_gib(rate, today, tuning):
    return rate * tuning["queue_hours"] * 3600 * today["message_size_kib"] / 1024 / 1024


def _gateway_holds(flow, tuning):
    """Seconds of process time per message in each gateway instance, inbound and outbound."""
    hop = tuning["internal_hop_seconds"]
    virus = flow["virus_checked_share"] * tuning["clamav_wait_seconds"]
    return {"client": tuning["client_smtp_seconds"], "hop": hop, "vscan": hop + virus,
            "lmtp": tuning["lmtp_seconds"]}


def _gateway_load(flow, today, tuning, inbound, outbound, sessions):
    """One gateway's busy Postfix processes (largest instance, all instances) and clamd scans
    for `inbound`/`outbound` messages per second and `sessions` proxied sessions."""
    holds = _gateway_holds(flow, tuning)
    per_instance = {
        "submit_pbs": outbound * holds["client"],
        "std": (inbound + outbound) * holds["hop"],
        "route": (inbound + outbound) * holds["hop"],
        "vscan": (inbound + outbound) * holds["vscan"],
        "mbox": inbound * (holds["hop"] + today["recipients_per_message"] * holds["lmtp"]),
    }
    busy = sum(per_instance.values()) + inbound * holds["hop"]  # + the mbox's smtpd
    return {
        "largest_instance": max(per_instance.values()),
        "busy_processes": busy,
        "clamd_scans": (inbound + outbound) * flow["virus_checked_share"] * tuning["clamav_wait_seconds"],
        "memory_gib": busy * tuning["postfix_process_mib"] / 1024
        + sessions * tuning["session_mib"]["relay"] / 1024,
    }


def _gateway_pools(flow, today, costs, hardware, tuning, redundancy, total):
    """(SMTP pool, POP/IMAP pool) servers needed when there are `total` gateways (each takes
    its share of inbound mail); None where a pool cannot fit whatever its size."""
    cpu = hardware["cores"] * tuning["utilisation"]
    memory = hardware["memory_gib"] * tuning["memory_utilisation"] - tuning["base_memory_gib"]["gateway"]
    disk = hardware["disk_gib"] * tuning["disk_utilisation"] - tuning["base_disk_gib"]
    carrying = max(total - redundancy, 1)
    inbound = flow["messages_in_per_second"] / carrying
    share = _gateway_load(flow, today, tuning, inbound, 0, 0)
    in_cpu = inbound * costs["gateway_per_message"]
    in_disk = _queue_gib(inbound, today, tuning)
    out = flow["messages_out_per_second"]
    out_load = _gateway_load(flow, today, tuning, 0, out, 0)
    smtp_needed = _servers_for([
        (out * costs["gateway_per_message"], cpu - in_cpu),
        (out_load["memory_gib"], memory - share["memory_gib"]),
        (_queue_gib(out, today, tuning), disk - in_disk),
    ])
    relay_memory = flow["sessions"] * tuning["session_mib"]["relay"] / 1024
    pop_needed = _servers_for([
        (flow["sessions_per_second"] * costs["relay_per_session"], cpu - in_cpu),
        (relay_memory, memory - share["memory_gib"]),
        (0, disk - in_disk),
    ])
    # The inbound share alone must fit a server too.
    if in_cpu > cpu or share["memory_gib"] > memory or in_disk > disk:
        return None, None
    return (None if smtp_needed is None else smtp_needed + redundancy,
            None if pop_needed is None else pop_needed + redundancy)


def _gateway_needed(flow, today, costs, hardware, tuning, redundancy):
    """Fewest gateways (and their split) that carry the flow, by galloping then bisecting:
    a pool never needs more servers when there are more gateways."""
    def fits(total):
        smtp, pop = _gateway_pools(flow, today, costs, hardware, tuning, redundancy, total)
        if smtp is None or pop is None or smtp + pop > total:
            return None
        return smtp, pop

    low, high = 1, 2
    while not fits(high):
        low, high = high, high * 2
        if high > SEARCH_LIMIT:
            return None, None
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle
    smtp, pop = fits(high)
    return high, (smtp, pop)


def _single_tier(demands, redundancy):
    """Servers needed for a tier whose servers share its load evenly."""
    needed = _servers_for(demands)
    return {"needed": None if needed is None else needed + redundancy, "active_needed": needed}


def _utilisation(load, servers, capacity):
    return load / max(servers, 1) / capacity if capacity > 0 else math.inf


def capacity_plan(today, tier_costs, hardware_classes, groups, growth_factor=10, target_utilisation=0.6,
                  redundancy=1, gateway_ratio=None, tuning=None):
    """Servers per tier and process limits for today's flow times growth_factor (module doc)."""
    today = _today(today)
    costs = _costs(tier_costs)
    classes = _classes(hardware_classes)
    growth = _number("capacity_growth_factor", growth_factor, 0, above=True)
    utilisation = _number("capacity_target_utilisation", target_utilisation, 0, 1, above=True)
    redundancy = _number("capacity_redundancy", redundancy, 0, integer=True)
    if not isinstance(groups, dict):
        _fail(f"groups must be the inventory's groups (a dict), not {groups!r}")
    tuning = _tuning(tuning)
    tuning["utilisation"] = utilisation
    flow = _flow(today, growth)
    headroom = tuning["headroom"]

    tiers, minimums = {}, {}
    hosts = {tier: _tier_hosts(groups, tier) for tier in TIER_GROUPS}
    hardware = {}
    for tier in TIER_GROUPS:
        name = _tier_class(tier, hosts[tier], classes, groups)
        hardware[tier] = classes[name] if name else None
        tiers[tier] = {"group": TIER_GROUPS[tier], "hardware_class": name, "present": len(hosts[tier]),
                       "hosts": hosts[tier], "reasons": []}

    def resources(tier):
        """(cpu, memory, disk) one server of the tier may plan to use."""
        facts = hardware[tier] or next(iter(classes.values()))
        return (facts["cores"] * utilisation,
                facts["memory_gib"] * tuning["memory_utilisation"] - tuning["base_memory_gib"].get(tier, 0),
                facts["disk_gib"] * tuning["disk_utilisation"] - tuning["base_disk_gib"])

    def carrying(tier):
        return max(tiers[tier]["present"] - redundancy, 1)

    # Load balancer: every message's connection and every POP/IMAP session; one active.
    cpu, memory, disk = resources("loadbalancer")
    connections = flow["sessions"] + flow["messages_per_second"] * tuning["client_smtp_seconds"]
    lb_cpu = (flow["messages_per_second"] + flow["sessions_per_second"]) * costs["loadbalancer_per_message"]
    lb_memory = connections * tuning["session_mib"]["loadbalancer"] / 1024
    tiers["loadbalancer"].update(_single_tier([(lb_cpu, cpu), (lb_memory, memory)], redundancy))
    tiers["loadbalancer"].update(cpu_seconds=lb_cpu, memory_gib=lb_memory, connections=connections,
                                 cpu_share=_utilisation(lb_cpu, 1, cpu / utilisation))
    minimums["loadbalancer_maxconn"] = connections * headroom

    # Spamcheck: inbound (once per spam-checked recipient) and outbound (the outbound check).
    cpu, memory, disk = resources("spamcheck")
    spam_cpu = costs["spamcheck_per_message"] * (flow["messages_in_per_second"] * flow["spam_checks_per_message"]
                                                  + flow["messages_out_per_second"])
    rate = flow["messages_per_second"]
    edge_hold = tuning["client_smtp_seconds"] + tuning["rspamd_wait_seconds"]
    scan_hold = tuning["internal_hop_seconds"] + tuning["rspamd_wait_seconds"]
    spam_busy = rate * (edge_hold + scan_hold)
    spam_memory = spam_busy * tuning["postfix_process_mib"] / 1024
    spam_disk = _queue_gib(rate, today, tuning)
    tiers["spamcheck"].update(_single_tier([(spam_cpu, cpu), (spam_memory, memory), (spam_disk, disk)], redundancy))
    servers = carrying("spamcheck")
    tiers["spamcheck"].update(cpu_seconds=spam_cpu, memory_gib=spam_memory, queue_gib=spam_disk,
                              cpu_share=_utilisation(spam_cpu, servers, cpu / utilisation))
    minimums["spamcheck_process_limit"] = rate / servers * edge_hold * headroom
    spam_cores = (hardware["spamcheck"] or {}).get("cores", 1)
    minimums["spamcheck_rspamd_workers"] = min(
        spam_cores, spam_cpu / servers * tuning["rspamd_cpu_share"] / utilisation)

    # Gateways: inbound on all of them, outbound on the SMTP pool, the relay on the POP pool.
    gateway = tiers["gateway"]
    facts = hardware["gateway"] or next(iter(classes.values()))
    needed, split = _gateway_needed(flow, today, costs, facts, tuning, redundancy)
    gateway.update(needed=needed, needed_split=split)
    present = gateway["present"]
    if gateway_ratio is not None and present:
        smtp, pop = _ratio(gateway_ratio, present)
    else:
        smtp = pop = present
    gateway["split"] = (smtp, pop) if gateway_ratio is not None and present else None
    inbound = flow["messages_in_per_second"] / carrying("gateway")
    outbound = flow["messages_out_per_second"] / max(smtp - redundancy, 1)
    sessions = flow["sessions"] / max(pop - redundancy, 1)
    session_rate = flow["sessions_per_second"] / max(pop - redundancy, 1)
    smtp_server = _gateway_load(flow, today, tuning, inbound, outbound, 0)
    pop_server = _gateway_load(flow, today, tuning, inbound, 0, sessions)
    cpu, memory, disk = resources("gateway")
    gateway.update(
        cpu_seconds=(flow["messages_per_second"] * costs["gateway_per_message"]
                     + flow["sessions_per_second"] * costs["relay_per_session"]),
        smtp_cpu_share=_utilisation((inbound + outbound) * costs["gateway_per_message"], 1, cpu / utilisation),
        pop_cpu_share=_utilisation(inbound * costs["gateway_per_message"] + session_rate * costs["relay_per_session"],
                                   1, cpu / utilisation),
        smtp_memory_gib=smtp_server["memory_gib"] + tuning["base_memory_gib"]["gateway"],
        pop_memory_gib=pop_server["memory_gib"] + tuning["base_memory_gib"]["gateway"],
    )
    gateway["pools_needed"] = _gateway_pools(flow, today, costs, facts, tuning, redundancy, max(present, 1))
    minimums["postfix_gateway_process_limit"] = max(smtp_server["largest_instance"],
                                                    pop_server["largest_instance"]) * headroom
    minimums["postfix_gateway_clamd_max_threads"] = max(smtp_server["clamd_scans"], pop_server["clamd_scans"]) \
        * headroom
    # The relay's login processes run in high-performance mode (role mailbox_proxy): one per
    # core, each proxying a share of the sessions; the process limit only caps how many
    # more Dovecot may start when they are all full.
    minimums["mailbox_proxy_process_limit"] = facts["cores"] * headroom
    minimums["mailbox_proxy_client_limit"] = sessions * headroom / facts["cores"]

    # Mailbox servers: LMTP deliveries and POP/IMAP sessions (each holds a login process
    # for its TLS, and an imap/pop3 process).
    cpu, memory, disk = resources("mailbox")
    mbox_cpu = (flow["deliveries_per_second"] * costs["mailbox_per_message"]
                + flow["sessions_per_second"] * costs["mailbox_per_session"])
    lmtp_busy = flow["deliveries_per_second"] * tuning["lmtp_seconds"]
    mbox_memory = (flow["sessions"] * tuning["session_mib"]["mailbox"]
                   + lmtp_busy * tuning["postfix_process_mib"]) / 1024
    tiers["mailbox"].update(_single_tier([(mbox_cpu, cpu), (mbox_memory, memory)], redundancy))
    servers = carrying("mailbox")
    tiers["mailbox"].update(cpu_seconds=mbox_cpu, memory_gib=mbox_memory,
                            cpu_share=_utilisation(mbox_cpu, servers, cpu / utilisation),
                            lmtp_destination_concurrency=_round_up(
                                lmtp_busy / servers / carrying("gateway") * headroom, 20))
    minimums["mailbox_process_limit"] = max(flow["sessions"], lmtp_busy) / servers * headroom
    mbox_cores = (hardware["mailbox"] or next(iter(classes.values())))["cores"]
    minimums["mailbox_client_limit"] = flow["sessions"] / servers * headroom / mbox_cores

    # rspamd's own worker count: min(4, max(1, cores - 2)).
    rspamd_default = min(4, max(1, int(spam_cores) - 2))
    floors = {
        "loadbalancer_maxconn": FLOORS["haproxy_maxconn"],
        "spamcheck_process_limit": FLOORS["postfix_process_limit"],
        "postfix_gateway_process_limit": FLOORS["postfix_process_limit"],
        "postfix_gateway_clamd_max_threads": FLOORS["clamd_max_threads"],
        "mailbox_proxy_process_limit": FLOORS["dovecot_process_limit"],
        "mailbox_proxy_client_limit": FLOORS["dovecot_client_limit"],
        "mailbox_process_limit": FLOORS["dovecot_process_limit"],
        "mailbox_client_limit": FLOORS["dovecot_client_limit"],
    }
    limits = {name: (max(rspamd_default, math.ceil(minimums[name] - 1e-9)) if name == "spamcheck_rspamd_workers"
                     else _round_up(minimums[name], floors[name]))
              for name in LIMIT_GROUPS}

    _judge(tiers, growth, redundancy)
    reasons = [reason for tier in tiers.values() for reason in tier["reasons"]]
    return {
        "ok": not reasons, "reasons": reasons, "growth_factor": growth, "redundancy": redundancy,
        "target_utilisation": utilisation, "flow": flow, "tiers": tiers, "limits": limits,
        "minimums": {name: round(value, 2) for name, value in minimums.items()},
    }


def _times(growth):
    return f"{growth:g}x"


def _judge(tiers, growth, redundancy):
    """Each tier's reasons: too few servers, a split that does not fit, no redundancy."""
    at = _times(growth)
    for tier, entry in tiers.items():
        label, present, needed = f"{tier} tier", entry["present"], entry["needed"]
        klass = entry["hardware_class"] or "servers"
        if present == 0:
            entry["reasons"].append(f"{label}: the inventory has no hosts in group {entry['group']}")
            continue
        if needed is None:
            entry["reasons"].append(f"{label}: no number of {klass} carries the flow at {at} "
                                    "(one server cannot even hold its base load): a bigger hardware class")
            continue
        if tier == "gateway":
            _judge_gateway(entry, at)
            continue
        if needed > present:
            reason = f"{label} needs {needed} {klass} at {at}, inventory has {present}: add {needed - present}"
            if tier == "loadbalancer":
                reason += " (VRRP keeps one load balancer active: a bigger class helps, more servers do not)"
            entry["reasons"].append(reason)
        elif tier == "loadbalancer" and entry["active_needed"] > 1:
            entry["reasons"].append(f"{label}: one {klass} cannot carry the flow at {at} and VRRP keeps one "
                                    "load balancer active: a bigger hardware class")


def _judge_gateway(entry, at):
    present, needed, klass = entry["present"], entry["needed"], entry["hardware_class"]
    smtp_needed, pop_needed = entry["pools_needed"]
    if entry["split"] is None:
        if needed > present:
            entry["reasons"].append(f"gateway tier needs {needed} {klass} at {at}, inventory has {present}: "
                                    f"add {needed - present}")
        return
    smtp, pop = entry["split"]
    if smtp_needed is not None and pop_needed is not None and smtp >= smtp_needed and pop >= pop_needed:
        return
    # Another split of the gateways present, as close as possible to today's?
    options = []
    if smtp_needed is not None and pop_needed is not None and smtp_needed + pop_needed <= present:
        options = [(abs(s - smtp), s) for s in range(smtp_needed, present - pop_needed + 1)]
    pools = (f"the SMTP pool needs {smtp_needed if smtp_needed is not None else 'more than any number of'}, "
             f"the POP/IMAP pool {pop_needed if pop_needed is not None else 'more than any number of'} "
             f"with the split {smtp}:{pop}")
    if needed > present:
        reason = (f"gateway tier needs {needed} {klass} at {at} (split {entry['needed_split'][0]}:"
                  f"{entry['needed_split'][1]}), inventory has {present}: add {needed - present}")
    else:
        reason = f"gateway tier: {pools}"
    if options:
        best = min(options)[1]
        reason += f"; or move the split to {best}:{present - best} (lb_gateway_ratio)"
    elif needed <= present:
        reason += f" ({present} gateways are enough with another split)"
    entry["reasons"].append(reason)


def _override(hostvars, groups, name):
    """The smallest value the inventory sets for a limit variable on its group's hosts."""
    values = []
    for host in (groups or {}).get(LIMIT_GROUPS[name]) or []:
        try:
            variables = hostvars[host]
        except KeyError:
            continue
        if name in variables:
            value = variables[name]
            try:
                values.append(int(value))
            except (TypeError, ValueError):
                _fail(f"{name} on {host} must be a whole number, not {value!r}")
    return min(values) if values else None


def _percent(value):
    return "-" if value is None or math.isinf(value) else f"{value * 100:.0f}%"


def capacity_verdict(plan, hostvars, groups):
    """The check's answer: lines to print, ok, and the reasons (plan's and overrides')."""
    if not isinstance(plan, dict) or "tiers" not in plan or "limits" not in plan:
        _fail("capacity_verdict needs the result of capacity_plan")
    at = _times(plan["growth_factor"])
    flow = plan["flow"]
    reasons = list(plan["reasons"])
    lines = [
        f"Flow at {at}: {flow['messages_in_per_second'] * 60:.0f} msg/min in, "
        f"{flow['messages_out_per_second'] * 60:.0f} out, {flow['deliveries_per_second']:.1f} deliveries/s, "
        f"{flow['sessions']:.0f} POP/IMAP sessions ({flow['sessions_per_second']:.1f}/s), "
        f"mail store {flow['mail_store_gib'] / 1024:.1f} TiB",
        f"Servers (N+{plan['redundancy']}, CPU target {plan['target_utilisation'] * 100:.0f}%, "
        f"load of one server with {plan['redundancy']} down):",
    ]
    for tier, entry in plan["tiers"].items():
        needed = "-" if entry["needed"] is None else entry["needed"]
        klass = entry["hardware_class"] or "-"
        line = f"  {tier:<13} {klass:<6} needed {needed:>3}  present {entry['present']:>3}"
        if tier == "gateway":
            if entry["needed_split"]:
                line += f"  (needs {entry['needed_split'][0]}:{entry['needed_split'][1]}"
                line += f", inventory {entry['split'][0]}:{entry['split'][1]})" if entry["split"] else ")"
            line += (f"  CPU SMTP pool {_percent(entry['smtp_cpu_share'])}, POP/IMAP pool "
                     f"{_percent(entry['pop_cpu_share'])}, memory {entry['smtp_memory_gib']:.1f}/"
                     f"{entry['pop_memory_gib']:.1f} GiB")
        else:
            line += f"  CPU {_percent(entry.get('cpu_share'))}"
        line += "  ok" if not entry["reasons"] else "  NO"
        lines.append(line)
    lines.append("Limits (model; inventory overrides win):")
    for name, value in plan["limits"].items():
        override = _override(hostvars, groups, name)
        minimum = plan["minimums"][name]
        if override is None:
            lines.append(f"  {name} = {value}")
            continue
        lines.append(f"  {name} = {override} (inventory; the model says {value}, the flow needs {minimum:g})")
        if override < minimum:
            reasons.append(f"{name} is {override} in the inventory, below the {math.ceil(minimum)} the flow "
                           f"needs at {at}: raise it (the model says {value}) or remove the override")
    lines.append(f"Capacity at {at}: " + ("yes" if not reasons else "no"))
    return {"ok": not reasons, "reasons": reasons, "lines": lines}


class FilterModule:
    def filters(self):
        return {"capacity_plan": capacity_plan, "capacity_verdict": capacity_verdict}
