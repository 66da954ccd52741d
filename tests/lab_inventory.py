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
INVENTORY = ROOT / "inventories" / "lab"

# Rendered by ansible itself, so the env-selected lab name and subnet are honoured, in a
# play with role `platform` (the shared names some lab values are written in).
_HOST_KEYS = ["ansible_host", "node_address", "lab_published_ports", "pop_before_smtp_window"]
_QUERY = (
    "{% set hosts = {} %}{% for h in groups['all'] %}"
    "{% set _ = hosts.update({h: dict(KEYS | zip(KEYS | map('extract', hostvars[h])))}) %}{% endfor %}"
    "{{ {'groups': groups, 'hosts': hosts, 'lab_name': lab_name, 'lab_publish_ports': lab_publish_ports}"
    " | to_json }}"
).replace("KEYS", repr(_HOST_KEYS))


def load():
    """Return {'groups', 'hosts', 'lab_name', 'lab_publish_ports'} for the current lab."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_ROLES_PATH=str(ROOT / "roles"))
    play = [{"name": "Read the lab", "hosts": "localhost", "gather_facts": False, "roles": ["platform"],
             "tasks": [{"name": "Lab", "ansible.builtin.debug": {"msg": _QUERY}}]}]
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as playbook:
        json.dump(play, playbook)
        playbook.flush()
        out = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(INVENTORY), playbook.name],
            check=True, capture_output=True, text=True, cwd=ROOT, env=env,
        ).stdout
    result = json.loads(out)["plays"][0]["tasks"][-1]["hosts"]["localhost"]["msg"]
    lab = json.loads(result) if isinstance(result, str) else result
    lab["root"] = str(ROOT)
    return lab
