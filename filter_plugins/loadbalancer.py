"""Filters for the load balancer: the service map as HAProxy sees it, and the stable
gateway pool split."""

from ansible.errors import AnsibleFilterError

CHECKS = ("smtp", "pop3", "imap", "sieve", "connect")
POOLS = ("smtp", "pop")
GROUPS = ("spamcheck", "gateway", "webmail")


def _port(name, field, value):
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() \
            or not 0 < int(value) < 65536:
        raise AnsibleFilterError(f"platform_services.{name}.{field} must be a TCP port, not {value!r}")
    return int(value)


def lb_services(services):
    """The service map (platform_services) as a list HAProxy's template renders.

    Each entry gets its name and the port its health check uses (`check_via` names a
    plain sibling whose backend port is checked). Bad entries fail with the entry and
    field named, before any file is written.
    """
    if not isinstance(services, dict) or not services:
        raise AnsibleFilterError("platform_services must be a non-empty dict of service name to settings")
    result, ports = [], {}
    for name, service in services.items():
        if not isinstance(service, dict):
            raise AnsibleFilterError(f"platform_services.{name} must be a dict")
        entry = {"name": name, "port": _port(name, "port", service.get("port")),
                 "backend_port": _port(name, "backend_port", service.get("backend_port")),
                 "group": service.get("group"), "pool": service.get("pool"),
                 "proxy_protocol": service.get("proxy_protocol", True), "check": service.get("check")}
        if entry["group"] not in GROUPS:
            raise AnsibleFilterError(f"platform_services.{name}.group must be one of {', '.join(GROUPS)}, "
                                     f"not {entry['group']!r}")
        if (entry["group"] == "gateway") != (entry["pool"] is not None):
            raise AnsibleFilterError(f"platform_services.{name}: a gateway service needs pool (smtp or pop), "
                                     "other groups none")
        if entry["pool"] is not None and entry["pool"] not in POOLS:
            raise AnsibleFilterError(f"platform_services.{name}.pool must be smtp or pop, not {entry['pool']!r}")
        if not isinstance(entry["proxy_protocol"], bool):
            raise AnsibleFilterError(f"platform_services.{name}.proxy_protocol must be true or false")
        if entry["check"] not in CHECKS:
            raise AnsibleFilterError(f"platform_services.{name}.check must be one of {', '.join(CHECKS)}, "
                                     f"not {entry['check']!r}")
        via = service.get("check_via")
        if via is not None:
            if via not in services or not isinstance(services[via], dict):
                raise AnsibleFilterError(f"platform_services.{name}.check_via names no service: {via!r}")
            entry["check_port"] = _port(via, "backend_port", services[via].get("backend_port"))
        if entry["port"] in ports:
            raise AnsibleFilterError(f"platform_services: {name} and {ports[entry['port']]} both use port "
                                     f"{entry['port']} on the load balancer")
        ports[entry["port"]] = name
        result.append(entry)
    return result


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
        return {"lb_pool_split": lb_pool_split, "lb_services": lb_services}
