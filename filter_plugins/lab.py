"""Filters for the podman lab."""

import re

from ansible.errors import AnsibleFilterError

# A disk image must hold Postfix's free-space floor (1.5 x message_size_limit) and some mail.
DISK_MIB = (64, 4096)


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


def lab_disk_volumes(disks, prefix, image_dir):
    """Turn a host's lab_disks {name: {path, size_mib}} into [{volume, image, path, size_mib,
    mount}]: one podman volume per disk, a loop-mounted ext4 image named after it."""
    volumes = []
    for name, disk in sorted((disks or {}).items()):
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", str(name)):
            raise AnsibleFilterError(f"lab_disks: {name!r} is not a name of lowercase letters, digits and '-'")
        path = str((disk or {}).get("path", ""))
        if not path.startswith("/") or path == "/":
            raise AnsibleFilterError(f"lab_disks.{name}.path must be an absolute directory, not {path!r}")
        try:
            size = int(disk["size_mib"])
        except (KeyError, TypeError, ValueError):
            raise AnsibleFilterError(f"lab_disks.{name} needs an integer size_mib")
        if not DISK_MIB[0] <= size <= DISK_MIB[1]:
            raise AnsibleFilterError(f"lab_disks.{name}.size_mib must be {DISK_MIB[0]}-{DISK_MIB[1]}, not {size}")
        volume = f"{prefix}-{name}"
        volumes.append({"volume": volume, "image": f"{image_dir}/{volume}.ext4", "path": path, "size_mib": size,
                        "mount": f"{volume}:{path}"})
    return volumes


class FilterModule:
    def filters(self):
        return {"lab_publish_specs": lab_publish_specs, "lab_disk_volumes": lab_disk_volumes}
