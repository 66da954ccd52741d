"""apt_present (library/ + action_plugins/) on this machine's own dpkg, in check mode, so
nothing is installed: it answers from dpkg when every package is there, hands over to
ansible.builtin.apt when one is missing or the package lists are due, and refuses what dpkg
cannot answer for."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def apt_present(args):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_STRATEGY="linear",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    run = subprocess.run(["ansible", "localhost", "-i", "localhost,", "-c", "local", "--check",
                          "-e", "ansible_python_interpreter=/usr/bin/python3", "-m", "apt_present",
                          "-a", json.dumps(args)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    return json.loads(run.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_installed_packages_are_answered_by_dpkg_without_apt():
    result = apt_present({"name": ["dpkg", "python3"], "update_cache": True, "cache_valid_time": 10**9})
    assert not result.get("failed") and not result["changed"], result
    assert result["missing"] == [] and result["cache_stale"] is False
    assert "cache_update_time" not in result  # ansible.builtin.apt did not run


def test_a_missing_package_goes_to_apt():
    result = apt_present({"name": ["dpkg", "no-such-package-ispmail"]})
    assert result["missing"] == ["no-such-package-ispmail"], result
    assert result["failed"] and "No package matching 'no-such-package-ispmail'" in result["msg"]


def test_stale_package_lists_go_to_apt():
    result = apt_present({"name": ["dpkg"], "update_cache": True, "cache_valid_time": 0})
    assert not result.get("failed"), result
    assert result["missing"] == [] and result["cache_stale"] is True
    assert "cache_update_time" in result  # apt's answer (check mode: the lists are not fetched)


@pytest.mark.parametrize("args, message", [
    ({"name": ["postfix=3.7"]}, "package names only"),
    ({"name": ["*clam*"]}, "package names only"),
    ({"name": ["./local.deb"]}, "package names only"),
    ({"name": ["dpkg"], "update_cache": True, "cache_valid_time": -1}, "cache_valid_time must be 0 or more"),
    ({"name": ["dpkg"], "state": "absent"}, "state"),
])
def test_what_dpkg_cannot_answer_is_refused_naming_it(args, message):
    result = apt_present(args)
    assert result["failed"] and message in result["msg"], result
