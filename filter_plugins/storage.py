"""Filters for the shared mail store."""

from ansible.errors import AnsibleFilterError

# Options that lose mail or corrupt Dovecot indexes on a store shared by several servers.
UNSAFE_OPTIONS = {
    "soft": "soft mounts return I/O errors to Dovecot during a filer failover; use hard",
    "nolock": "nolock disables the locks Dovecot relies on between servers",
    "async": "async acknowledges writes the filer has not stored; fsync would lie",
}


def nfs_mount_options(options, version):
    """Return the mount option string for the mail store, refusing unsafe options.

    The NFS version comes from its own variable, so it may not appear in `options`.
    """
    if not isinstance(options, (list, tuple)):
        raise AnsibleFilterError("nfs_mailstore_options must be a list of mount options")
    result = []
    for option in options:
        name = str(option).split("=", 1)[0].strip()
        if not name:
            raise AnsibleFilterError("nfs_mailstore_options contains an empty option")
        if name in UNSAFE_OPTIONS:
            raise AnsibleFilterError(f"nfs_mailstore_options: '{name}' is not allowed: {UNSAFE_OPTIONS[name]}")
        if name in ("vers", "nfsvers"):
            raise AnsibleFilterError("nfs_mailstore_options: set the version with nfs_mailstore_version, not " + name)
        if option not in result:
            result.append(str(option))
    version = str(version)
    if version not in ("3", "4", "4.1", "4.2"):
        raise AnsibleFilterError(f"nfs_mailstore_version must be 3, 4, 4.1 or 4.2, not '{version}'")
    result.append(f"nfsvers={version}")
    return ",".join(result)


class FilterModule:
    def filters(self):
        return {"nfs_mount_options": nfs_mount_options}
