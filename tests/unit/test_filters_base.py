import pytest
from ansible.errors import AnsibleFilterError

import node_address
from port_acl import port_acl_sources
from lab import lab_disk_volumes, lab_publish_specs
from storage import nfs_mount_options


def test_nfs_options_add_version_and_keep_order():
    assert nfs_mount_options(["rw", "hard", "proto=tcp", "rw"], "3") == "rw,hard,proto=tcp,nfsvers=3"


@pytest.mark.parametrize("option", ["soft", "nolock", "async"])
def test_nfs_unsafe_options_are_refused(option):
    with pytest.raises(AnsibleFilterError, match=f"'{option}' is not allowed"):
        nfs_mount_options(["rw", option], "3")


@pytest.mark.parametrize("option", ["vers=4", "nfsvers=3"])
def test_nfs_version_only_from_its_variable(option):
    with pytest.raises(AnsibleFilterError, match="nfs_mailstore_version"):
        nfs_mount_options([option], "3")


def test_nfs_bad_version():
    with pytest.raises(AnsibleFilterError, match="must be 3, 4, 4.1 or 4.2"):
        nfs_mount_options(["rw"], "5")


def test_nfs_options_must_be_a_list():
    with pytest.raises(AnsibleFilterError, match="must be a list"):
        nfs_mount_options("rw,hard", "3")


def test_publish_specs_sorted_on_loopback():
    ports = {"smtp": {"host": 10025, "container": 25}, "imap": {"host": "10143", "container": 143}}
    assert lab_publish_specs(ports) == ["127.0.0.1:10143:143", "127.0.0.1:10025:25"]


@pytest.mark.parametrize("port", [{"host": 0, "container": 25}, {"host": "x", "container": 25}, {"host": 1}])
def test_publish_specs_bad_ports(port):
    with pytest.raises(AnsibleFilterError, match="lab_published_ports.smtp"):
        lab_publish_specs({"smtp": port})


def test_disk_volumes_name_volume_and_image_after_the_host():
    disks = {"queue": {"path": "/var/spool/postfix-std", "size_mib": "256"}}
    assert lab_disk_volumes(disks, "lab-gw1", "/c") == [
        {"volume": "lab-gw1-queue", "image": "/c/lab-gw1-queue.ext4", "path": "/var/spool/postfix-std", "size_mib": 256,
         "mount": "lab-gw1-queue:/var/spool/postfix-std"}]
    assert lab_disk_volumes({}, "lab-gw1", "/c") == []


@pytest.mark.parametrize("disks, message", [
    ({"Queue": {"path": "/q", "size_mib": 256}}, "lowercase"),
    ({"q": {"path": "q", "size_mib": 256}}, "absolute"),
    ({"q": {"path": "/", "size_mib": 256}}, "absolute"),
    ({"q": {"path": "/q"}}, "integer size_mib"),
    ({"q": {"path": "/q", "size_mib": 8}}, "64-4096"),
])
def test_disk_volumes_bad_input(disks, message):
    with pytest.raises(AnsibleFilterError, match=message):
        lab_disk_volumes(disks, "lab-gw1", "/c")


class CountingHostvars(dict):
    """hostvars stand-in that counts how often each host's variables are resolved."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads = {}

    def __getitem__(self, host):
        self.reads[host] = self.reads.get(host, 0) + 1
        return super().__getitem__(host)


def test_node_addresses_keep_order_and_resolve_each_host_once(monkeypatch):
    monkeypatch.setattr(node_address, "_NODE_ADDRESSES", {})
    hostvars = CountingHostvars({"gw1": {"node_address": "10.0.0.31"}, "gw2": {"node_address": "10.0.0.32"},
                                 "lb1": {"node_address": "10.0.0.10"}})
    assert node_address.node_addresses(["gw2", "gw1"], hostvars) == ["10.0.0.32", "10.0.0.31"]
    assert node_address.node_addresses(["lb1", "gw1", "gw2"], hostvars) == ["10.0.0.10", "10.0.0.31", "10.0.0.32"]
    assert hostvars.reads == {"gw1": 1, "gw2": 1, "lb1": 1}


def test_a_host_without_node_address_is_named(monkeypatch):
    monkeypatch.setattr(node_address, "_NODE_ADDRESSES", {})
    with pytest.raises(AnsibleFilterError, match="host mbox9 has no node_address"):
        node_address.node_addresses(["mbox9"], {"mbox9": {}})


def test_port_rule_sources_by_family_as_written():
    assert port_acl_sources(["10.0.0.5", "192.0.2.0/24", "2001:db8::/32", "::1", "10.1.2.3/16"]) == {
        "v4": ["10.0.0.5", "192.0.2.0/24", "10.1.2.3/16"], "v6": ["2001:db8::/32", "::1"], "invalid": []}


@pytest.mark.parametrize("source", ["gw1", "10.0.0.256", "10.0.0.0/33", "", "2001:db8::/129"])
def test_a_port_rule_source_that_is_no_address_is_invalid(source):
    assert port_acl_sources(["10.0.0.1", source])["invalid"] == [source]
