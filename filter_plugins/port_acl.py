"""port_acl_sources: the sources of a port rule (role port_acl) by address family."""

import ipaddress

# ansible.utils' ipv4/ipv6/ipaddr filters check their arguments against an argument spec
# on every call, deep-copying the data: the port rules of one host took seconds per run.


def port_acl_sources(sources):
    """{v4: [...], v6: [...], invalid: [...]}: each source, as written, by family."""
    families = {"v4": [], "v6": [], "invalid": []}
    for source in sources or []:
        try:
            network = ipaddress.ip_network(str(source), strict=False)
        except ValueError:
            families["invalid"].append(source)
            continue
        families[f"v{network.version}"].append(source)
    return families


class FilterModule:
    def filters(self):
        return {"port_acl_sources": port_acl_sources}
