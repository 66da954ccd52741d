"""playbooks/capacity_check.yml against the inventories: yes for production at 10x, no
with the reasons at 40x, and a clean run for the lab. Only the inventory is read."""

import os
import subprocess

import pytest

from test_wiring import ROOT

ENV = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="false")


def check(inventory, *extra):
    return subprocess.run(["ansible-playbook", "-i", f"inventories/{inventory}", "playbooks/capacity_check.yml",
                           *extra], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120, check=False)


def test_production_carries_ten_times_today():
    result = check("production")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Capacity at 10x: yes" in result.stdout
    for tier in ("loadbalancer", "spamcheck", "gateway", "mailbox"):
        assert f"  {tier} " in result.stdout
    assert "spamcheck_process_limit = 610" in result.stdout


def test_production_at_forty_times_says_no_and_why():
    result = check("production", "-e", "capacity_growth_factor=40")
    assert result.returncode != 0
    out = " ".join(result.stdout.split())
    assert "Capacity at 40x: no" in out
    assert "spamcheck tier needs 4 rx200 at 40x, inventory has 2: add 2" in out
    assert "move the split to 3:5 (lb_gateway_ratio)" in out
    assert "loadbalancer_maxconn is 50000 in the inventory, below the 82400" in out


@pytest.mark.parametrize("growth", ["10", "1"])
def test_lab_runs_cleanly_and_says_yes(growth):
    """The lab's tiny flow fits its containers (N+0: one load balancer, one spamcheck)."""
    result = check("lab", "-e", f"capacity_growth_factor={growth}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Servers (N+0" in result.stdout
    assert f"Capacity at {growth}x: yes" in result.stdout
