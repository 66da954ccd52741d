#!/usr/bin/env python3
"""What the lab image preinstalls: the packages the platform's roles install with apt.

Read from the roles themselves (their apt tasks and the package lists in vars/), so the
image never needs a list of its own. Left out, for the host to install as in production:
an apt task that installs a package the role preseeds with the host's own values (slapd's
domain, Roundcube's database), and the lab-only roles (lab_*). Debconf answers that are
the same for every host and come before the install (Postfix's "No configuration") are
given to the image's installs.

Prints JSON for lab/build-image.sh: {"packages": [...], "debconf": ["pkg question type
value", ...], "every_host": the packages role common installs on every host (their units
stay on in the image, as on every production host), "tag": <hash of all and of
build-image.sh, so a change in how the image is made makes a new one>}. Fails naming the
task it cannot read.
"""

import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

ROLES = Path(__file__).resolve().parent.parent / "roles"
RECIPE = Path(__file__).resolve().parent / "build-image.sh"
APT = ("apt_present", "ansible.builtin.apt", "apt", "ansible.builtin.package", "package")
DEBCONF = ("ansible.builtin.debconf", "debconf")
# One list variable, a sum of them, or a dict of them indexed by a setting.
TERM = re.compile(r"^(__\w+)(\[[^\]]+\])?$")


class Unreadable(Exception):
    pass


def tasks_of(items):
    for task in items or []:
        if not isinstance(task, dict):
            continue
        yield task
        for key in ("block", "rescue", "always"):
            yield from tasks_of(task.get(key))


def role_vars(role):
    values = {}
    for path in sorted((role / "vars").glob("*.yml")):
        values.update(yaml.safe_load(path.read_text()) or {})
    return values


def package_names(value, variables, where):
    """The packages an apt task's name: lists, its variables resolved from the role's vars."""
    if isinstance(value, list):
        return [name for item in value for name in package_names(item, variables, where)]
    text = str(value).strip()
    if "{{" not in text:
        return [text]
    expression = text.removeprefix("{{").removesuffix("}}").strip()
    names = []
    for term in (part.strip() for part in expression.split("+")):
        match = TERM.match(term)
        if not match or match.group(1) not in variables:
            # Inventory lists (common_packages) are each host's own, not the image's.
            if re.fullmatch(r"[a-z]\w*_packages", term):
                continue
            raise Unreadable(f"{where}: cannot resolve package list {text!r}")
        found = variables[match.group(1)]
        if match.group(2):  # a dict indexed by a setting: every choice
            found = [name for choice in found.values() for name in choice]
        names += package_names(found, variables, where)
    return names


def image_spec(roles=ROLES, recipe=RECIPE):
    packages, debconf, host_preseeded, every_host = set(), set(), set(), set()
    apt_tasks = []
    for role in sorted(path for path in roles.iterdir() if (path / "tasks").is_dir()):
        if role.name.startswith("lab_"):
            continue
        variables = role_vars(role)
        for path in sorted((role / "tasks").glob("*.yml")):
            answers = {}  # constant answers given so far in this file, by package
            for task in tasks_of(yaml.safe_load(path.read_text())):
                where = f"{role.name}/tasks/{path.name}: {task.get('name', '?')}"
                for module in DEBCONF:
                    if module in task:
                        args = task[module]
                        if "{{" in str(args.get("value", "")) or "{{" in str(args.get("question", "")):
                            host_preseeded.add(args["name"])
                        else:
                            answer = f"{args['name']} {args['question']} {args['vtype']} {args['value']}"
                            answers.setdefault(args["name"], []).append(answer)
                for module in APT:
                    if module in task and "name" in task[module]:
                        names = package_names(task[module]["name"], variables, where)
                        apt_tasks.append(names)
                        # Only answers a new host has before the install: one the role
                        # gives afterwards (clamd.conf left to the role) finds the
                        # package's own first install, in the image too.
                        debconf.update(answer for name in names for answer in answers.get(name, []))
                        if role.name == "common":
                            every_host.update(names)
    for names in apt_tasks:
        if not host_preseeded.intersection(names):
            packages.update(names)
    spec = {"packages": sorted(packages), "debconf": sorted(debconf), "every_host": sorted(every_host)}
    made = json.dumps(spec, sort_keys=True).encode() + recipe.read_bytes()
    spec["tag"] = hashlib.sha256(made).hexdigest()[:12]
    return spec


if __name__ == "__main__":
    try:
        print(json.dumps(image_spec()))
    except Unreadable as error:
        sys.exit(f"image_packages: {error}")
