"""The lab as the lab inventory describes it: hosts, groups, containers, addresses.

Shared by `make lab-info` and the integration tests, so neither repeats the topology.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# ISPMAIL_FULL=1: the slow integration suites in full (make test runs their short pass).
FULL = os.environ.get("ISPMAIL_FULL") == "1"
INVENTORY = ROOT / "inventories" / "lab"

# Rendered by ansible itself, so the env-selected lab name and subnet are honoured: each
# host's own values, in a play with role `platform` (the shared names some lab values
# are written in; hostvars of another host would not carry a play's role defaults).
_HOST_KEYS = ["ansible_host", "node_address", "lab_published_ports", "pop_before_smtp_window",
              "platform_lb_stats_port"]
_QUERY = "{{ dict(KEYS | zip(KEYS | map('extract', vars))) | to_json }}".replace("KEYS", repr(_HOST_KEYS))
_LAB_QUERY = ("{{ {'groups': groups, 'lab_name': lab_name, 'lab_publish_ports': lab_publish_ports, "
              "'platform_operator_networks': platform_operator_networks, "
              "'platform_pop_before_smtp_port': platform_pop_before_smtp_port, "
              "'platform_ca_certificate': platform_ca_certificate, "
              "'platform_mailbox_held_slots_file': platform_mailbox_held_slots_file} | to_json }}")


def ansible_env(**extra):
    """The environment for an ansible-playbook whose output a test reads: the repository's own
    output settings (ansible.cfg), whatever the caller says (molecule forces colour when its
    own output is coloured, which puts escape codes at the start of every line)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="false", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
               ANSIBLE_CALLBACK_RESULT_FORMAT="yaml", ANSIBLE_DISPLAY_OK_HOSTS="true")
    env.setdefault("CONTAINERS_CONF", str(ROOT / "lab" / "containers.conf"))
    env.update(extra)
    return env



def accounts(root=ROOT):
    """{address: {password, spam_check, virus_check, forward_to, keep_copy}} of the lab's
    present users, from its accounts file (docs/directory-data.md): a user's own contract,
    else the domain's."""
    import yaml  # only the tools that read accounts need it

    data = yaml.safe_load((Path(root) / "inventories/lab/group_vars/ldap/accounts.yml").read_text())
    domains = {domain["name"]: domain for domain in data["mail_domains"]}
    users = {}
    for user in data["mail_users"]:
        if user.get("state", "present") != "present":
            continue
        domain = domains[user["address"].split("@")[1]]
        users[user["address"]] = {
            "password": user["password"],
            "spam_check": bool(user.get("spam_check", domain.get("spam_check", False))),
            "virus_check": bool(user.get("virus_check", domain.get("virus_check", False))),
            "forward_to": list(user.get("forward_to") or []),
            "keep_copy": bool(user.get("keep_copy", True)),
        }
    return users


def load():
    """Return {'groups', 'hosts', 'lab_name', 'lab_publish_ports', 'platform_operator_networks',
    'platform_pop_before_smtp_port', 'platform_ca_certificate', 'platform_mailbox_held_slots_file'}
    for the current lab."""
    # The stock linear strategy: Mitogen's reports each host's result of a task as a task of
    # its own to the json callback, and nothing here connects to a host anyway.
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_ROLES_PATH=str(ROOT / "roles"), ANSIBLE_STRATEGY="linear")
    # debug needs no connection: nothing reaches the containers.
    play = [{"name": "Read the lab", "hosts": "all", "gather_facts": False, "roles": ["platform"],
             "tasks": [{"name": "Host", "ansible.builtin.debug": {"msg": _QUERY}},
                       {"name": "Lab", "ansible.builtin.debug": {"msg": _LAB_QUERY}, "run_once": True}]}]
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as playbook:
        json.dump(play, playbook)
        playbook.flush()
        out = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(INVENTORY), playbook.name],
            check=True, capture_output=True, text=True, cwd=ROOT, env=env,
        ).stdout
    tasks = json.loads(out)["plays"][0]["tasks"]

    def parsed(result):
        return json.loads(result["msg"]) if isinstance(result["msg"], str) else result["msg"]

    lab = parsed(next(iter(tasks[-1]["hosts"].values())))
    lab["hosts"] = {host: parsed(result) for host, result in tasks[-2]["hosts"].items()}
    lab["root"] = str(ROOT)
    return lab
