"""Secrets stay out of what an operator sees: `site.yml --check --diff -v` against the
deployed lab prints none of the lab's secrets and fails nowhere.

The check runs on one host of each tier, so every role of site.yml runs (legacy and
internet hosts get only the base roles, which every tier host has as well). It sets a
different `ansible_managed`, so every template the roles write would change. --diff
then prints each template's diff, and a task that writes a secret without
`diff: false` shows it. -v prints each task's result and loop items, so a missing
`no_log` shows as well. The lab's secrets are read from the resolved inventory: every
variable whose name says it is a secret, and everything under one (its dicts and lists),
plus the tier hosts' private keys.

The lab must be deployed: molecule verify runs this after converge, on two tiers (the
full pass, every tier, takes about 15 minutes: ISPMAIL_FULL=1). It runs the way
the operator does (docs/lab.md), in this environment (ISPMAIL_LAB* pick the lab).
"""

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import lab_inventory

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# One host of each of these runs every role of site.yml (ISPMAIL_FULL=1, on demand);
# make test's short pass checks two light tiers that still hold secrets of their own.
TIERS = ("lb", "spamcheck", "gateway", "mailbox", "ldap", "webmail") if lab_inventory.FULL else ("lb", "webmail")
SECRET_NAME = re.compile(r"password|passwd|secret|des_key|bind_pw|dnpass|_key$")
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
ARTIFACTS = ROOT / "artifacts" / "secrets"


def _run(args, **kwargs):
    return subprocess.run(args, cwd=ROOT, env=lab_inventory.ansible_env(), capture_output=True, text=True, **kwargs)


def _secret_strings(name, value, secret=False):
    """(variable, value) for every string at or under a secret-named variable."""
    secret = secret or bool(SECRET_NAME.search(str(name)))
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_strings(f"{name}.{key}", item, secret) if secret else _secret_strings(key, item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_strings(f"{name}[{index}]", item, secret)
    elif secret and isinstance(value, str):
        # Not a value: a path (the *_private_key variables), an unrendered template, or
        # playbook_vars' marker for what it cannot resolve.
        if len(value) >= 6 and not value.startswith(("/", "<undefined")) and "{{" not in value:
            yield name, value


def _from_fact_cache(value):
    """True for a value read back from the fact cache (ansible-inventory marks it unsafe)."""
    if isinstance(value, dict):
        return "__ansible_unsafe" in value or any(_from_fact_cache(item) for item in value.values())
    if isinstance(value, list):
        return any(_from_fact_cache(item) for item in value)
    return False


def lab_secrets():
    """{secret value: the variable it came from} of the lab, as the playbooks resolve it."""
    found = {}
    inventory = _run([str(BIN / "ansible-inventory"), "-i", "inventories/lab", "--list"], check=True)
    for hostvars in json.loads(inventory.stdout)["_meta"]["hostvars"].values():
        # Cached facts are not inventory (a service named *password* is no secret): the
        # fact cache gives them back marked unsafe, which inventory values never are.
        for name, value in hostvars.items():
            if name.startswith("ansible_") or _from_fact_cache(value):
                continue
            found.update((v, n) for n, v in _secret_strings(name, value))
    # Role defaults derived from the inventory (mailbox_ldap_bind_password, ...).
    resolved = _run([sys.executable, "tests/playbook_vars.py", "-i", "inventories/lab", "playbooks/site.yml"],
                    check=True)
    for play in json.loads(resolved.stdout):
        for name, value in play["vars"].items():
            found.update((v, n) for n, v in _secret_strings(name, value))
    return found


def private_key_lines(lab, hosts):
    """{a line of a private key's body: its file} for the hosts' lab keys."""
    lines = {}
    for host in hosts:
        key = ROOT / ".cache" / f"{lab['lab_name']}-pki" / f"{host}.key"
        if key.exists():
            lines.update((line, key.name) for line in key.read_text().splitlines()
                         if len(line) >= 16 and not line.startswith("-----"))
    return lines


def _where(output, value):
    """The task headers under which a value shows, for the failure message."""
    tasks, task = [], "(before any task)"
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.rstrip(" *")
        elif value in line and task not in tasks:
            tasks.append(task)
    return tasks


def test_a_check_run_with_diffs_shows_no_secret_and_fails_nowhere(lab):
    hosts = [lab["groups"][tier][0] for tier in TIERS]
    secrets = lab_secrets()
    # The reading itself must work, or the test would pass on nothing.
    names = {name.split(".")[0].split("[")[0] for name in secrets.values()}
    assert {"ldap_admin_password", "ldap_service_passwords", "loadbalancer_stats_password",
            "spamcheck_controller_password_hash", "webmail_des_key"} <= names, sorted(names)
    secrets.update(private_key_lines(lab, hosts))

    marker = f"Ansible managed (secrets check {uuid.uuid4().hex[:12]})"
    done = _run([str(BIN / "ansible-playbook"), "-i", "inventories/lab", "playbooks/site.yml",
                 "--check", "--diff", "-v", "--limit", ",".join(hosts),
                 "-e", json.dumps({"ansible_managed": marker})], timeout=3600)
    output = done.stdout + done.stderr
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "site-check-diff.log").write_text(output)

    # A leak counts even if the run failed later on.
    leaks = {f"{name} ({value})": _where(output, value) for value, name in secrets.items() if value in output}
    assert not leaks, ("secrets in the output of site.yml --check --diff -v (give these tasks diff: false "
                       f"or no_log: true; full log in {ARTIFACTS / 'site-check-diff.log'}):\n"
                       + "\n".join(f"  {secret}: {', '.join(tasks)}" for secret, tasks in leaks.items()))

    recap = {m[0]: {"changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
             for m in RECAP.findall(done.stdout)}
    assert done.returncode == 0 and recap, done.stdout[-3000:] + done.stderr[-2000:]
    assert sorted(recap) == sorted(hosts), recap
    bad = {host: counts for host, counts in recap.items() if counts["failed"] or counts["unreachable"]}
    assert not bad, f"the check run failed on {bad}:\n" + done.stdout[-3000:]
    # The changed ansible_managed reached every host's templates and their diffs printed:
    # otherwise finding no secret above would prove nothing.
    assert marker in done.stdout, "no template diff was printed"
    assert all(counts["changed"] > 0 for counts in recap.values()), recap
