"""The inventory always wins: every variable a role reads can be set in inventory.

The playbooks wire nothing: shared values come from role `platform` and the roles' own
defaults (the lowest precedence), never from play `vars:`, `vars_files:` or role
parameters, which would silently beat inventory group_vars and host_vars.
tests/playbook_vars.py resolves each variable with Ansible's own variable manager
where the role's tasks run, without connecting to any host.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = ["inventories/lab", "inventories/production"]
PLAYBOOKS = ["playbooks/site.yml", "playbooks/lab/internet.yml", "playbooks/lab/legacy.yml"]


def _role_variables():
    names = {}
    for defaults in sorted(ROOT.glob("roles/*/defaults/main.yml")):
        for name in yaml.safe_load(defaults.read_text()) or {}:
            names[name] = defaults.parent.parent.name
    return names


def _hosts(group):
    hosts = set((group or {}).get("hosts") or {})
    for child in ((group or {}).get("children") or {}).values():
        hosts |= _hosts(child)
    return hosts


def _override_inventory(path, inventory, variables):
    """An inventory source that sets variables in host_vars of every host of `inventory`."""
    (path / "host_vars").mkdir(parents=True)
    (path / "hosts.yml").write_text("all:\n  children:\n    ungrouped: {}\n")
    for host in _hosts(yaml.safe_load((ROOT / inventory / "hosts.yml").read_text())["all"]):
        (path / "host_vars" / f"{host}.yml").write_text(yaml.safe_dump(variables))
    return path


def _probe(inventories, playbook, *args):
    command = [sys.executable, str(ROOT / "tests" / "playbook_vars.py")]
    for inventory in inventories:
        command += ["-i", str(inventory)]
    proc = subprocess.run(command + [playbook, *args], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_inventory_sets_every_role_variable(tmp_path, inventory):
    """Each role variable set in inventory reaches the role's tasks unchanged, in every play."""
    names = _role_variables()
    override = _override_inventory(tmp_path, inventory, {name: f"from inventory: {name}" for name in names})
    checked = 0
    for playbook in PLAYBOOKS:
        for entry in _probe([ROOT / inventory, override], playbook):
            beaten = {name: value for name, value in entry["vars"].items() if value != f"from inventory: {name}"}
            assert not beaten, (
                f"{playbook}, play '{entry['play']}', role {entry['role']} on {entry['host']}: the inventory's "
                f"value is overridden for {sorted(beaten)} (play vars, vars_files or role vars?)")
            checked += len(entry["vars"])
    assert checked > len(names)


def _plays(path):
    for play in yaml.safe_load(path.read_text()) or []:
        if isinstance(play, dict) and "hosts" in play:
            yield play


def test_playbooks_wire_no_role_variable():
    """No play sets a role's variable (vars, vars_files, role parameters): inventory must win."""
    names = _role_variables()
    found = []
    for path in sorted(ROOT.glob("playbooks/**/*.yml")):
        for play in _plays(path):
            if play.get("vars_files"):
                found.append(f"{path.relative_to(ROOT)}: play '{play.get('name')}' has vars_files")
            for name in play.get("vars") or {}:
                if name in names:
                    found.append(f"{path.relative_to(ROOT)}: play '{play.get('name')}' sets {name} "
                                 f"(role {names[name]})")
            for role in play.get("roles") or []:
                if isinstance(role, dict) and (role.get("vars") or set(role) - {"role", "name", "tags", "when"}):
                    found.append(f"{path.relative_to(ROOT)}: play '{play.get('name')}' passes parameters to "
                                 f"role {role.get('role') or role.get('name')}")
    assert not found, "set these in the role's defaults (fed by role platform) instead:\n" + "\n".join(found)


def test_play_vars_are_derived_only():
    """A play's vars beat inventory: only internal (__) names, derived from inventory, live there."""
    found = [f"{path.relative_to(ROOT)}: play '{play.get('name')}' sets {name}"
             for path in sorted(ROOT.glob("playbooks/**/*.yml")) for play in _plays(path)
             for name in play.get("vars") or {} if not name.startswith("__")]
    assert not found, ("an inventory value of these would be ignored; read the inventory's name with a default, "
                       "or name a derived value __*:\n" + "\n".join(found))


def test_every_play_lists_role_platform_first():
    """Role platform carries the shared names; a play without it cannot render them."""
    missing = []
    for path in sorted(ROOT.glob("playbooks/**/*.yml")):
        for play in _plays(path):
            roles = [role if isinstance(role, str) else role.get("role") for role in play.get("roles") or []]
            if roles and roles[0] != "platform":
                missing.append(f"{path.relative_to(ROOT)}: play '{play.get('name')}' roles {roles}")
    assert not missing, "\n".join(missing)


def test_no_playbook_level_group_vars():
    """playbooks/group_vars would outrank inventory group_vars/all: keep wiring in role defaults."""
    assert not [p for p in ROOT.glob("playbooks/**/*_vars") if p.is_dir()]


def test_role_vars_are_internal():
    """vars/ outranks inventory: only internal (__role_) names may live there."""
    public = []
    for path in sorted(ROOT.glob("roles/*/vars/*.yml")):
        role = path.parent.parent.name
        for name in yaml.safe_load(path.read_text()) or {}:
            if not name.startswith(f"__{role}_"):
                public.append(f"{path.relative_to(ROOT)}: {name}")
    assert not public, "\n".join(public)


CHANGED_SERVICES = {
    "smtp": {"port": 2025, "group": "spamcheck", "backend_port": 20025, "proxy_protocol": True, "check": "smtp"},
    "submission": {"port": 2587, "group": "gateway", "pool": "smtp", "backend_port": 20587,
                   "proxy_protocol": True, "check": "smtp"},
    "submissions": {"port": 2465, "group": "gateway", "pool": "smtp", "backend_port": 20465,
                    "proxy_protocol": True, "check": "smtp", "check_via": "submission"},
    "pop_before_smtp": {"port": 3525, "group": "gateway", "pool": "smtp", "backend_port": 23525,
                        "proxy_protocol": True, "check": "smtp"},
    "pop3": {"port": 1110, "group": "gateway", "pool": "pop", "backend_port": 20110, "proxy_protocol": True,
             "check": "pop3"},
    "pop3s": {"port": 1995, "group": "gateway", "pool": "pop", "backend_port": 20995, "proxy_protocol": True,
              "check": "pop3", "check_via": "pop3"},
    "imap": {"port": 1143, "group": "gateway", "pool": "pop", "backend_port": 20143, "proxy_protocol": True,
             "check": "imap"},
    "imaps": {"port": 1993, "group": "gateway", "pool": "pop", "backend_port": 20993, "proxy_protocol": True,
              "check": "imap", "check_via": "imap"},
    "sieve": {"port": 5190, "group": "gateway", "pool": "pop", "backend_port": 24190, "proxy_protocol": True,
              "check": "sieve"},
    "https": {"port": 8443, "group": "webmail", "backend_port": 18443, "proxy_protocol": True, "check": "connect"},
}


@pytest.fixture(scope="module")
def changed_map(tmp_path_factory):
    """What the lab renders with every port of the service map changed in inventory."""
    override = _override_inventory(tmp_path_factory.mktemp("services"), "inventories/lab",
                                    {"platform_services": CHANGED_SERVICES})
    inventories = [ROOT / "inventories" / "lab", override]
    rendered = {}
    for entry in _probe(inventories, "playbooks/loadbalancer.yml", "--template", "loadbalancer:haproxy.cfg.j2",
                        "--fact", "__loadbalancer_split=loadbalancer_gateways | lb_pool_split(loadbalancer_gateway_ratio)"):
        rendered.update(entry["templates"])
    for entry in _probe(inventories, "playbooks/gateway.yml", "--template", "mailbox_proxy:dovecot.conf.j2",
                        "--var", "__postfix_gateway_instances", "--var", "__postfix_gateway_master_services"):
        rendered.update(entry["templates"])
        rendered.setdefault("gateway vars", {}).update(entry["vars"])
    for entry in _probe(inventories, "playbooks/webmail.yml", "--template", "webmail:nginx-site.conf.j2"):
        rendered.update(entry["templates"])
        rendered["webmail vars"] = entry["vars"]
    for entry in _probe(inventories, "playbooks/spamcheck.yml", "--var", "__spamcheck_instances"):
        rendered.setdefault("spamcheck vars", {}).update(entry["vars"])
    return rendered


def _master_cf(instances, shared):
    """master.cf of every instance, rendered by role postfix_multi's own filters."""
    from postfix_instances import postfix_instance_services, postfix_master_line
    standard = yaml.safe_load((ROOT / "roles/postfix_multi/vars/main.yml").read_text())[
        "__postfix_multi_standard_services"]
    services = postfix_instance_services(instances, standard, shared)
    return {name: "\n".join(postfix_master_line(service) for service in entries)
            for name, entries in services.items()}


def test_service_map_moves_load_balancer_and_backends(changed_map):
    """One map: a changed port shows on the load balancer and on the backend that serves it."""
    haproxy = changed_map["haproxy.cfg.j2"]
    for name, service in CHANGED_SERVICES.items():
        assert f"frontend {name}\n  bind *:{service['port']}\n" in haproxy, name
        assert f":{service['backend_port']} send-proxy-v2" in haproxy, name
    assert "send-proxy-v2 check check-send-proxy port 20587" in haproxy  # submissions checked via submission

    relay = changed_map["dovecot.conf.j2"]
    for name in ("imap", "imaps", "pop3", "pop3s", "sieve"):
        assert f"port = {CHANGED_SERVICES[name]['backend_port']}\n    haproxy = yes" in relay, name
        assert f"port = {CHANGED_SERVICES[name]['port']}\n" in relay, name

    gateway = changed_map["gateway vars"]
    master = _master_cf(gateway["__postfix_gateway_instances"], gateway["__postfix_gateway_master_services"])
    for port in (2587, 2465, 20587, 20465):
        assert f"\n{port}  inet  n" in "\n" + master["submit"], port
    for port in (3525, 23525):
        assert f"\n{port}  inet  n" in "\n" + master["pbs"], port
    assert "smtpd_upstream_proxy_protocol=haproxy" in master["submit"]
    spamcheck = changed_map["spamcheck vars"]
    edge = _master_cf(spamcheck["__spamcheck_instances"], None)["edge"]
    assert "\n20025  inet  n" in "\n" + edge and "postscreen" in edge.split("20025", 1)[1].splitlines()[0]

    nginx = changed_map["nginx-site.conf.j2"]
    assert "listen 8443 ssl" in nginx and "listen 18443 ssl http2 proxy_protocol" in nginx
    webmail = changed_map["webmail vars"]
    assert (webmail["webmail_imap_port"], webmail["webmail_sieve_port"], webmail["webmail_submission_port"]) \
        == (1143, 5190, 2587)

