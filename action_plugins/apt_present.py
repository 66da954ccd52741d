"""apt_present: ask dpkg (module apt_present, read-only), then run ansible.builtin.apt only when
something is missing or the package lists are due for a refresh (library/apt_present.py says why)."""

from __future__ import annotations

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("name", "update_cache", "cache_valid_time", "install_recommends"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        check = self._execute_module(module_name="apt_present", module_args=args, task_vars=task_vars)
        if check.get("failed") or not (check["missing"] or check["cache_stale"]):
            result.update(check)
            return result
        apt_args = {key: value for key, value in args.items() if value is not None}
        installed = self._execute_module(module_name="ansible.builtin.apt", module_args=dict(apt_args, state="present"),
                                         task_vars=task_vars)
        result.update(installed)
        result.update(missing=check["missing"], cache_stale=check["cache_stale"])
        return result
