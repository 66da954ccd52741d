"""Filters for playbooks/status.yml: read what each host answered and say what is wrong.

The playbook only collects raw answers (systemctl, queue counts, ispmail-ldap-sync,
HAProxy's `show stat`, greetings, Prometheus); these filters turn them into one report,
so the judgement is unit-tested (tests/unit/test_filters_health.py) and the playbook stays
thin. Every finding is a problem (status.yml fails) or a warning (printed only).
"""

import csv
import io
import json

from ansible.errors import AnsibleFilterError

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
DEFAULT_SETTINGS = {
    "queue_max": 200,       # messages in one instance's queues (all but hold) before it is a problem
    "deferred_max": 20,     # deferred messages in one instance before it is a problem
    "hold_max": 100,        # held messages (quarantine) before a warning
    "probe_delay_max": 60,  # seconds of the last end-to-end probe before it is a problem
}


def _stdout_lines(result):
    return [line for line in (result or {}).get("stdout", "").splitlines() if line.strip()]


def _failed_to_run(result, what):
    """A reason when a collecting command did not give an answer, else None."""
    if not result or result.get("skipped"):
        return None
    if result.get("unreachable"):
        return f"{what}: host unreachable"
    if result.get("rc") not in (0, None) and not result.get("stdout"):
        err = (result.get("stderr") or result.get("msg") or "").strip().splitlines()
        return f"{what}: command failed (rc={result.get('rc')}{': ' + err[-1] if err else ''})"
    return None


def health_section(result, name):
    """One section (`### name`) of the combined command's output, as a result of its own.

    The ldap section ends with `### ldap rc=N` (ispmail-ldap-sync's exit status); a host
    without slapd has an empty ldap section, reported as rc 100 (not an LDAP host).
    """
    sections, current = {}, None
    for line in (result or {}).get("stdout", "").splitlines():
        if line.startswith("### "):
            current = line[4:].strip()
            sections.setdefault(current, [])
        elif current is not None:
            sections[current].append(line)
    if name not in sections:
        return {"rc": (result or {}).get("rc", 1) or 1, "stdout": "",
                "stderr": (result or {}).get("stderr", "") or f"no {name} section in the output"}
    if name == "ldap":
        rc_lines = [key for key in sections if key.startswith("ldap rc=")]
        if not rc_lines:
            return {"rc": 100, "stdout": "", "stderr": ""}
        return {"rc": int(rc_lines[0].split("=", 1)[1]), "stdout": "\n".join(sections["ldap"]),
                "stderr": (result or {}).get("stderr", "")}
    return {"rc": 0, "stdout": "\n".join(sections[name]), "stderr": ""}


# ---------------------------------------------------------------- one aspect each

def health_services(result):
    """(summary, problems, warnings) from `<unit> <state>` lines; `failed <unit>` lines are other failed units."""
    failure = _failed_to_run(result, "services")
    if failure:
        return None, [failure], []
    units, problems, warnings = {}, [], []
    for line in _stdout_lines(result):
        parts = line.split()
        if parts[0] == "failed" and len(parts) == 2:
            warnings.append(f"unit {parts[1]} failed")
            continue
        if len(parts) != 2:
            continue
        units[parts[0]] = parts[1]
        if parts[1] != "active":
            problems.append(f"{parts[0]} is {parts[1]}")
    # A failed unit the platform runs is already a problem above.
    warnings = [w for w in warnings if w.split()[1] not in units and w.split()[1].removesuffix(".service") not in units]
    if not units:
        return "no platform services found", problems, warnings
    active = sum(state == "active" for state in units.values())
    return f"services {active}/{len(units)} active", problems, warnings


def instance_name(name):
    """postmulti's instance name as the metrics name it: '-' is the default instance."""
    if name in ("-", "postfix"):
        return "postfix"
    return name.removeprefix("postfix-")


def postfix_queue_counts(result):
    """{instance: {queue: count}} from `<instance> <queue> <count>` lines."""
    counts = {}
    for line in _stdout_lines(result):
        parts = line.split()
        if len(parts) != 3 or parts[1] not in QUEUES or not parts[2].isdigit():
            raise AnsibleFilterError(f"unexpected queue line: {line!r}")
        counts.setdefault(instance_name(parts[0]), {})[parts[1]] = int(parts[2])
    return counts


def health_queues(result, settings=None):
    settings = dict(DEFAULT_SETTINGS, **(settings or {}))
    failure = _failed_to_run(result, "postfix queues")
    if failure:
        return None, [failure], []
    counts = postfix_queue_counts(result)
    if not counts:
        return None, [], []
    problems, warnings, parts = [], [], []
    for instance, queues in counts.items():
        waiting = sum(n for queue, n in queues.items() if queue != "hold")
        parts.append(f"{instance} a={queues.get('active', 0)} d={queues.get('deferred', 0)} "
                     f"h={queues.get('hold', 0)}" + (f" i={queues.get('incoming', 0) + queues.get('maildrop', 0)}"
                                                     if queues.get('incoming', 0) + queues.get('maildrop', 0) else ""))
        if queues.get("deferred", 0) > settings["deferred_max"]:
            problems.append(f"postfix {instance}: {queues['deferred']} deferred messages "
                            f"(more than {settings['deferred_max']})")
        elif waiting > settings["queue_max"]:
            problems.append(f"postfix {instance}: {waiting} messages queued (more than {settings['queue_max']})")
        elif queues.get("deferred", 0):
            warnings.append(f"postfix {instance}: {queues['deferred']} deferred")
        if queues.get("hold", 0) > settings["hold_max"]:
            warnings.append(f"postfix {instance}: {queues['hold']} messages on hold")
    return "queues " + ", ".join(parts), problems, warnings


def health_ldap(result):
    """The replica or provider state from `ispmail-ldap-sync status --json` (rc 0 lag ok, 1 lag, 2 down)."""
    if not result or result.get("skipped") or result.get("rc") == 100:  # 100: no slapd on this host
        return None, [], []
    if result.get("unreachable"):
        return None, ["ldap: host unreachable"], []
    try:
        report = json.loads(result.get("stdout") or "")
    except ValueError:
        return None, [f"ldap: no status ({(result.get('stderr') or '').strip()[:200]})"], []
    lag = report.get("lag_seconds")
    lag_text = "unknown" if lag is None else f"{lag:g}s"
    role = "provider" if report.get("self") else "replica"
    down = [p["uri"] for p in report.get("providers", []) if not p.get("reachable")]
    summary = f"ldap {role} lag={lag_text} ready={str(report.get('ready')).lower()}"
    if role == "provider":
        summary += f" writable={str(report.get('writable')).lower()}"
    problems, warnings = [], []
    if not report.get("local", {}).get("reachable", False):
        problems.append(f"ldap: slapd does not answer ({report.get('local', {}).get('error')})")
    elif result.get("rc") not in (0, None):
        problems.append(f"ldap: {role} lagging (lag={lag_text}: {report.get('reason')})")
    elif not report.get("ready"):
        problems.append(f"ldap: {role} not ready ({report.get('reason')})")
    if down:
        warnings.append(f"ldap: providers unreachable from here: {' '.join(down)}")
    return summary, problems, warnings


def haproxy_stat(text):
    """{backend: {server: status}} from the runtime API's `show stat` CSV."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        raise AnsibleFilterError(f"unexpected answer to show stat: {(text or '').strip()[:200]!r}")
    rows = csv.DictReader(io.StringIO("\n".join([lines[0][2:]] + lines[1:])))
    result = {}
    for row in rows:
        if not row.get("pxname") or row.get("svname") == "FRONTEND":
            continue
        servers = result.setdefault(row["pxname"], {})  # a backend with no server is still a backend
        if row.get("svname") != "BACKEND":
            servers[row["svname"]] = row.get("status", "")
    return result


def health_lb(result, services, members, split, ratio):
    """Backend states and the gateway split against inventory.

    services  platform_services | lb_services (name, group, pool);
    members   {group: [servers]} behind the load balancer;
    split     {smtp: [...], pop: [...]} that inventory's lb_gateway_ratio gives (lb_pool_split).
    """
    failure = _failed_to_run(result, "haproxy runtime API")
    if failure:
        return None, [failure], []
    if not result or result.get("skipped"):
        return None, [], []
    try:
        states = haproxy_stat(result.get("stdout"))
    except AnsibleFilterError as exc:
        return None, [f"haproxy runtime API: {exc}"], []
    problems, warnings = [], []
    serving = {"smtp": set(), "pop": set()}
    pool_servers = {"smtp": {}, "pop": {}}
    up = total = 0
    for service in services:
        backend = states.get(service["name"])
        if backend is None:
            problems.append(f"haproxy has no backend {service['name']}")
            continue
        for server in members.get(service["group"], []):
            status = backend.get(server)
            if status is None:
                problems.append(f"backend {service['name']} has no server {server}")
                continue
            pool = service.get("pool")
            wanted = pool is None or server in split.get(pool, [])
            maint = status.startswith("MAINT")
            if pool:
                pool_servers[pool].setdefault(server, []).append(not maint)
            if not wanted:
                if not maint:
                    problems.append(f"split wrong: {server} serves {service['name']} ({status}), "
                                    f"but inventory ({ratio}) puts it in the other pool")
                continue
            total += 1
            if maint:
                problems.append(f"split wrong: {server} is in maintenance in {service['name']}, "
                                f"inventory ({ratio}) puts it in the {pool or service['group']} pool")
            elif status.startswith("UP") or status == "no check":
                up += 1
                if status != "UP" and status != "no check":
                    warnings.append(f"{service['name']}/{server} {status}")
            else:
                problems.append(f"backend {service['name']}: {server} is {status}")
    for pool, servers in pool_servers.items():
        serving[pool] = [server for server, flags in servers.items() if flags and all(flags)]
    summary = (f"split smtp={','.join(serving['smtp']) or '-'} pop={','.join(serving['pop']) or '-'} "
               f"(inventory {ratio}); backend servers up {up}/{total}")
    return summary, problems, warnings


def health_greetings(result):
    """Mailbox servers answering: `<name> ok <greeting>` or `<name> fail <error>` lines."""
    failure = _failed_to_run(result, "mailbox greetings")
    if failure:
        return None, [failure], []
    if not result or result.get("skipped"):
        return None, [], []
    answered, problems = [], []
    for line in _stdout_lines(result):
        name, state, *rest = line.split(None, 2) + [""]
        if state == "ok":
            answered.append(name)
        else:
            problems.append(f"{name} does not answer: {' '.join(rest).strip()}")
    return ("answering " + " ".join(answered)) if answered else None, problems, []


def health_probe(result, settings=None):
    """The last end-to-end probe per mailbox server, from Prometheus' query API (a warning when unreachable)."""
    settings = dict(DEFAULT_SETTINGS, **(settings or {}))
    if not result or result.get("skipped"):
        return None, [], []
    if result.get("unreachable") or result.get("status") != 200 or not isinstance(result.get("json"), dict):
        return "monitoring: unreachable", [], ["monitoring: unreachable (Prometheus did not answer the query)"]
    samples = result["json"].get("data", {}).get("result", [])
    if not samples:
        return "probe: no data", [], ["probe: Prometheus has no ispmail_probe_delivery_seconds yet"]
    parts, problems = [], []
    for sample in sorted(samples, key=lambda s: s.get("metric", {}).get("mailbox_server", "")):
        server = sample.get("metric", {}).get("mailbox_server", "?")
        try:
            delay = float(sample["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        parts.append(f"{server} {delay:.1f}s")
        if delay != delay or delay > settings["probe_delay_max"]:  # NaN: no success yet
            problems.append(f"probe: delivery to {server} took {delay:.0f}s (more than {settings['probe_delay_max']}s)")
    return "probe delay " + ", ".join(parts), problems, []


# ---------------------------------------------------------------- the whole report

def health_report(results, settings=None, hosts=None):
    """The report of every host: {lines, problems, warnings, ok}.

    results: [{host, tiers, unreachable, services, queues, ldap, lb, lb_expect, mailbox, probe}]
    with the registered results of the collecting tasks (missing: not collected there).
    hosts: every host that should have answered; one without a result (a task failed on it,
    so it left the play) is a problem, never a line silently missing from the report.
    """
    if not isinstance(results, list):
        raise AnsibleFilterError("health_report expects a list of per-host results")
    answered = {r.get("host") for r in results}
    results = results + [{"host": host, "missing": True} for host in hosts or [] if host not in answered]
    lines, problems, warnings = [], [], []
    width = max([len(r.get("host", "")) for r in results] + [4])
    for entry in results:
        host = entry["host"]
        tiers = ",".join(entry.get("tiers") or []) or "-"
        own_problems, own_warnings, parts = [], [], []
        if entry.get("missing"):
            own_problems.append("no result: a task failed on this host before the summary (see above)")
        elif entry.get("unreachable"):
            own_problems.append(f"unreachable ({entry.get('unreachable_msg') or 'no connection'})")
        else:
            expect = entry.get("lb_expect") or {}
            checks = [
                health_services(entry.get("services")),
                health_queues(entry.get("queues"), settings),
                health_ldap(entry.get("ldap")),
                health_lb(entry.get("lb"), expect.get("services", []), expect.get("members", {}),
                          expect.get("split", {}), expect.get("ratio", "?")) if entry.get("lb") else (None, [], []),
                health_greetings(entry.get("mailbox")),
                health_probe(entry.get("probe"), settings),
            ]
            for summary, found, warned in checks:
                if summary:
                    parts.append(summary)
                own_problems += found
                own_warnings += warned
        state = "FAIL" if own_problems else "WARN" if own_warnings else "OK"
        lines.append(f"{host:<{width}} {tiers:<10} {state:<4} {'; '.join(parts)}")
        lines += [f"{'':<{width}}   problem: {p}" for p in own_problems]
        lines += [f"{'':<{width}}   warning: {w}" for w in own_warnings]
        problems += [f"{host}: {p}" for p in own_problems]
        warnings += [f"{host}: {w}" for w in own_warnings]
    return {"lines": lines, "problems": problems, "warnings": warnings, "ok": not problems}


class FilterModule:
    def filters(self):
        return {"health_report": health_report, "haproxy_stat": haproxy_stat, "health_section": health_section}
