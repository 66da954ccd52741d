"""A no-change run reloads no systemd: `systemctl daemon-reload` costs seconds on a busy
host (eleven on a lab gateway) and a run did it dozens of times. Outside handlers, a task
that starts a unit reloads only when the unit file it depends on changed."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _tasks(items):
    for task in items or []:
        yield task
        for key in ("block", "rescue", "always"):
            yield from _tasks(task.get(key))


def test_tasks_reload_systemd_only_when_a_unit_changed():
    unconditional = []
    for path in sorted(ROOT.glob("roles/*/tasks/*.yml")):
        for task in _tasks(yaml.safe_load(path.read_text())):
            args = task.get("ansible.builtin.systemd_service") or {}
            reload = args.get("daemon_reload", False)
            if reload is False:
                continue
            # A loop over changed results only runs when something changed.
            if reload is True and "changed" in str(task.get("loop", "")):
                continue
            if isinstance(reload, str) and "is changed" in reload:
                continue
            unconditional.append(f"{path.relative_to(ROOT)}: {task.get('name')}")
    assert not unconditional, "daemon_reload on every run (make it '{{ <unit task> is changed }}'):\n" + \
        "\n".join(unconditional)
