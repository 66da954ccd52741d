# Mitogen's linear strategy (the `mitogen` package, requirements.txt): one Python
# interpreter per host for the whole run instead of one per task, which makes a
# no-change site.yml several times faster (docs/lab.md). ansible.cfg selects it;
# ANSIBLE_STRATEGY=linear runs without it.
from __future__ import annotations

import ansible_mitogen.affinity
import ansible_mitogen.loaders
import ansible_mitogen.strategy

# Mitogen pins Ansible's processes to CPUs, and what they start inherits it: on two cores
# every process was on CPU 1, the lab's containers (created by a task) included, so the
# whole lab ran on one core. The base Policy pins nothing.
ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()

Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Base):
    pass
