"""Both inventories against the roles' argument specs, without touching any host:
every role variable an inventory sets must exist in that role's spec (a typo fails here,
not on a production host) and, where it is a literal, have the declared type."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from role_docs import main_entry_point

ROOT = Path(__file__).resolve().parents[2]
ROLES = {p.parent.parent.name: main_entry_point(p)["options"]
         for p in sorted(ROOT.glob("roles/*/meta/argument_specs.yml"))}
# Longest prefix first, so mailbox_proxy_* is not taken for role mailbox.
PREFIXES = sorted(ROLES, key=len, reverse=True)


def owning_role(variable):
    return next((role for role in PREFIXES if variable.startswith(role + "_")), None)


def relaxed(spec):
    """The spec with `required` dropped: role defaults fill what an inventory leaves out."""
    spec = copy.deepcopy(spec)
    for option in spec.values():
        option.pop("required", None)
        option.pop("description", None)
        if "options" in option:
            option["options"] = relaxed(option["options"])
    return spec


def templated(value):
    return "{{" in json.dumps(value, ensure_ascii=False)


def inventory_hostvars(name):
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(ROOT / "inventories" / name), "--list"],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out)["_meta"]["hostvars"]


@pytest.mark.parametrize("inventory", ["lab", "production"])
def test_inventory_role_variables_match_the_argument_specs(inventory):
    problems = []
    for host, hostvars in sorted(inventory_hostvars(inventory).items()):
        for role in ROLES:
            given = {k: v for k, v in hostvars.items() if owning_role(k) == role}
            unknown = sorted(set(given) - set(ROLES[role]))
            problems += [f"{host}: {name} is not an option of role {role}" for name in unknown]
            literal = {k: v for k, v in given.items() if k in ROLES[role] and not templated(v)}
            result = ArgumentSpecValidator(relaxed({k: ROLES[role][k] for k in literal})).validate(literal)
            problems += [f"{host}: role {role}: {msg}" for msg in result.error_messages]
    assert not problems, "\n".join(problems)
