"""node_addresses: the inventory's host addresses, as role platform lists them."""

from ansible.errors import AnsibleFilterError

# hostvars[host] resolves every variable of that host (its cached facts included) on each
# access: a task that built each tier's address list that way spent seconds on it. Within
# one process (a task's worker) each host's node_address is read once; it is an inventory
# value, which no play changes.
_NODE_ADDRESSES = {}


def node_addresses(hosts, hostvars):
    """The node_address of each of hosts, in order."""
    addresses = []
    for host in hosts:
        if host not in _NODE_ADDRESSES:
            try:
                _NODE_ADDRESSES[host] = str(hostvars[host]["node_address"])
            except KeyError:
                raise AnsibleFilterError(f"host {host} has no node_address in the inventory")
        addresses.append(_NODE_ADDRESSES[host])
    return addresses


class FilterModule:
    def filters(self):
        return {"node_addresses": node_addresses}
