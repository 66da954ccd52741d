"""What the resilience run needs to know about the lab: the load balancer's client ports,
the users and where each message to them must land, containers, the mail store, the CA."""

import ssl
from pathlib import Path

import containers  # tests/bench/side_by_side: podman(), sh()
from lab_inventory import accounts as lab_users  # tests/: the accounts file, read once


def expected_mailboxes(users, rcpt):
    """The mailboxes a message to rcpt must land in, once each: its own unless it forwards
    without a copy, plus every forward target (followed once more, as the platform does)."""
    user = users[rcpt]
    if not user["forward_to"]:
        return [rcpt]
    boxes = [rcpt] if user["keep_copy"] else []
    for target in user["forward_to"]:
        if target in users and not users[target]["forward_to"]:
            boxes.append(target)
    return sorted(set(boxes))


def contract(user):
    return ("spam" if user["spam_check"] else "-") + "/" + ("virus" if user["virus_check"] else "-")


class Lab:
    """The running lab, read once through tests/lab_inventory.py."""

    def __init__(self, inventory):
        self.inventory = inventory
        self.root = Path(inventory["root"])
        self.name = inventory["lab_name"]
        self.groups = inventory["groups"]
        self.hosts = inventory["hosts"]
        self.users = lab_users(self.root)
        lb = self.groups["lb"][0]
        self.lb_address = self.hosts[lb]["node_address"]
        # The load balancer's client ports as the inventory publishes them (host_vars/lb1.yml).
        published = self.hosts[lb]["lab_published_ports"]
        self.ports = {name: int(published[name]["container"]) for name in ("smtp", "submission", "pop3", "imap")}
        self.ca_file = self.root / ".cache" / f"{self.name}-pki" / "ca.crt"

    def container(self, host):
        return self.hosts[host]["ansible_host"]

    def address(self, host):
        return self.hosts[host]["node_address"]

    def tls_context(self):
        return ssl.create_default_context(cafile=str(self.ca_file))

    def mail_store(self):
        return Path(containers.podman("volume", "inspect", "--format", "{{.Mountpoint}}", f"{self.name}-mailstore"))

    def maildir(self, store, user):
        local, domain = user.split("@")
        return store / domain / local / "Maildir"

    def pinned_mailbox_hosts(self, users):
        """{user: mailbox host} from the directory (the LDAP pin the proxy and LMTP follow)."""
        ldap = self.container(self.groups["ldap"][0])
        pins = {}
        for user in users:
            out = containers.sh(ldap, "ldapsearch -Q -LLL -Y EXTERNAL -H ldapi:/// -b ou=domains,dc=ispmail,dc=test "
                                      f"'(mail={user})' ispmailMailboxHost", check=False)
            value = out.split("ispmailMailboxHost: ")[1].split()[0] if "ispmailMailboxHost: " in out else None
            pins[user] = value.split(".")[0] if value else None
        return pins
