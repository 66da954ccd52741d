# Mitogen's free strategy: each host at its own pace (status.yml, where one unreachable host
# must not hold up the others), with mitogen_linear's one interpreter per host.
from __future__ import annotations

import ansible_mitogen.affinity
import ansible_mitogen.loaders
import ansible_mitogen.strategy

# No CPU pinning (see mitogen_linear.py).
ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()

Base = ansible_mitogen.loaders.strategy_loader.get("free", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Base):
    pass
