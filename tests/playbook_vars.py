#!/usr/bin/env python3
"""What a variable is worth where a role's tasks run: every play of a playbook, every
role it lists, the play's first host, resolved by Ansible's own variable manager (play
vars, vars_files, role vars and defaults, inventory). Nothing connects to any host.

    tests/playbook_vars.py -i inventories/lab [-i more] playbooks/site.yml [--template ROLE:FILE]

prints JSON: [{"playbook", "play", "role", "host", "vars": {name: value},
"templates": {file: text}}]. The defaults are resolved, plus the names of
every role the play lists (role `platform`); --var adds a role's internal names
(`__<role>_...`, for the role that owns them). --template renders a role template with
those variables (for the service-map test); a set_fact the template needs is
computed by the caller's --fact NAME=EXPRESSION.
"""

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
os.chdir(ROOT)

from ansible import context  # noqa: E402
from ansible.errors import AnsibleUndefinedVariable  # noqa: E402
from ansible.inventory.manager import InventoryManager  # noqa: E402
from ansible.module_utils.common.collections import ImmutableDict  # noqa: E402
from ansible.parsing.dataloader import DataLoader  # noqa: E402
from ansible.playbook import Playbook  # noqa: E402
from ansible.plugins.loader import init_plugin_loader  # noqa: E402
from ansible.template import Templar, trust_as_template  # noqa: E402
from ansible.vars.hostvars import HostVars  # noqa: E402
from ansible.vars.manager import VariableManager  # noqa: E402
import yaml  # noqa: E402


def _plain(value):
    """JSON-safe copy of a templated value."""
    return json.loads(json.dumps(value, default=str))


def _resolve(templar, name):
    """A variable's value, or a marker when it cannot be resolved here (a vault secret)."""
    try:
        return _plain(templar.resolve_variable_expression(name))
    except AnsibleUndefinedVariable as exc:
        return f"<undefined: {exc.message.splitlines()[0]}>"


def _role_tasks(blocks):
    for block in blocks:
        for task in block.block:
            if hasattr(task, "block"):
                yield from _role_tasks([task])
            else:
                yield task


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--inventory", action="append", required=True)
    parser.add_argument("playbook")
    parser.add_argument("--template", action="append", default=[], help="ROLE:TEMPLATE to render")
    parser.add_argument("--fact", action="append", default=[], help="NAME=EXPRESSION set before rendering")
    parser.add_argument("--os-family", default="Debian", help="whose roles/*/vars/<os_family>.yml to load")
    parser.add_argument("--var", action="append", default=[], help="also resolve NAME (e.g. a role's internal data)")
    args = parser.parse_args()

    context.CLIARGS = ImmutableDict(tags={}, skip_tags={}, check=True, diff=False, extra_vars=())
    init_plugin_loader()
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=args.inventory)
    variables = VariableManager(loader=loader, inventory=inventory)
    variables._hostvars = HostVars(inventory=inventory, variable_manager=variables, loader=loader)
    playbook = Playbook.load(args.playbook, variable_manager=variables, loader=loader)

    results = []
    for play in playbook.get_plays():
        hosts = inventory.get_hosts(play.hosts)
        if not hosts:
            continue
        host = hosts[0]
        listed = [role.get_name() for role in play.get_roles()]
        for block_owner in play.get_roles():
            if block_owner.get_name() == "platform":
                continue
            tasks = list(_role_tasks(block_owner.compile(play=play)))
            if not tasks:
                continue
            hostvars = variables.get_vars(play=play, host=host, task=tasks[-1])
            templar = Templar(loader=loader, variables=hostvars)
            names = []
            for role in listed:
                defaults = ROOT / "roles" / role / "defaults" / "main.yml"
                if defaults.exists():
                    names += list((yaml.safe_load(defaults.read_text()) or {}).keys())
            resolved = {name: _resolve(templar, name) for name in names}
            for name in args.var:
                if name.startswith(f"__{block_owner.get_name()}_"):
                    resolved[name] = _resolve(templar, name)
            rendered = {}
            for spec in args.template:
                role, _, template = spec.partition(":")
                if role != block_owner.get_name():
                    continue
                # What the role's include_vars of vars/<os_family>.yml adds at run time.
                os_vars = ROOT / "roles" / role / "vars" / f"{args.os_family}.yml"
                facts = yaml.safe_load(os_vars.read_text()) if os_vars.exists() else {}
                templar = Templar(loader=loader, variables=dict(hostvars, **facts))
                for fact in args.fact:
                    name, _, expression = fact.partition("=")
                    facts[name] = templar.evaluate_expression(trust_as_template(expression))
                render = Templar(loader=loader, variables=dict(hostvars, ansible_managed="Ansible managed", **facts))
                text = (ROOT / "roles" / role / "templates" / template).read_text()
                rendered[template] = render.template(trust_as_template(text))
            results.append({"playbook": args.playbook, "play": play.get_name(), "role": block_owner.get_name(),
                            "host": host.name, "vars": resolved, "templates": rendered})
    json.dump(results, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
