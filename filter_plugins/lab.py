"""Filters for the podman lab."""

from ansible.errors import AnsibleFilterError


def lab_publish_specs(ports):
    """Turn {name: {host: N, container: M}} into podman publish specs on 127.0.0.1."""
    specs = []
    for name, port in sorted((ports or {}).items()):
        try:
            host, container = int(port["host"]), int(port["container"])
        except (KeyError, TypeError, ValueError):
            raise AnsibleFilterError(f"lab_published_ports.{name} needs integer 'host' and 'container' ports")
        if not (0 < host < 65536 and 0 < container < 65536):
            raise AnsibleFilterError(f"lab_published_ports.{name}: ports must be 1-65535")
        specs.append(f"127.0.0.1:{host}:{container}")
    return specs


class FilterModule:
    def filters(self):
        return {"lab_publish_specs": lab_publish_specs}
