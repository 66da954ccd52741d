"""Run an Ansible module's main() in-process, as the module tests need.

The repository's module_utils are importable as ansible.module_utils.<name>, as on a
target host.
"""

import sys
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
if str(ROOT / "library") not in sys.path:
    sys.path.insert(0, str(ROOT / "library"))

from ansible.module_utils import basic  # noqa: E402
from ansible.module_utils.testing import patch_module_args  # noqa: E402


class ModuleExit(Exception):
    """exit_json/fail_json of a module run in-process; .result holds what it returned."""

    def __init__(self, result):
        super().__init__(result)
        self.result = result


def _exit_json(self, **result):
    result.setdefault("changed", False)
    raise ModuleExit(result)


def _fail_json(self, msg, **result):
    raise ModuleExit(dict(result, failed=True, msg=msg))


def call(module, args):
    """Run module.main() with args (including _ansible_* keys); return its result dict."""
    original = basic.AnsibleModule.exit_json, basic.AnsibleModule.fail_json
    basic.AnsibleModule.exit_json, basic.AnsibleModule.fail_json = _exit_json, _fail_json
    try:
        with patch_module_args(args):
            try:
                module.main()
            except ModuleExit as exit_info:
                return exit_info.result
    finally:
        basic.AnsibleModule.exit_json, basic.AnsibleModule.fail_json = original
    raise AssertionError("module returned without exit_json or fail_json")


def module_runner(monkeypatch):
    """run(module, check=False, diff=False, **args) -> result dict."""
    del monkeypatch  # call() restores AnsibleModule itself

    def run(module, check=False, diff=False, **args):
        return call(module, dict(args, _ansible_check_mode=check, _ansible_diff=diff))

    return run
