"""Filters for the load balancer: the stable gateway pool split."""

from ansible.errors import AnsibleFilterError


def lb_pool_split(servers, ratio):
    """{"smtp": [...], "pop": [...]} for "SMTP:POP": the first servers serve SMTP.

    The same rule as library/lb_pool_ratio.py (tests/unit/test_filters_loadbalancer.py
    checks they agree), so the rendered config and the runtime change match.
    """
    servers = list(servers or [])
    parts = str(ratio).split(":")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise AnsibleFilterError(f"lb_gateway_ratio must look like 5:3 (SMTP:POP servers), not '{ratio}'")
    smtp, pop = (int(part) for part in parts)
    if smtp < 1 or pop < 1:
        raise AnsibleFilterError(f"lb_gateway_ratio {ratio}: each pool needs at least one gateway")
    if smtp + pop != len(servers):
        raise AnsibleFilterError(f"lb_gateway_ratio {ratio} adds up to {smtp + pop}, but there are "
                                 f"{len(servers)} gateways")
    return {"smtp": servers[:smtp], "pop": servers[smtp:]}


class FilterModule:
    def filters(self):
        return {"lb_pool_split": lb_pool_split}
