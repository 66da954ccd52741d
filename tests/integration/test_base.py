"""The base every lab host gets from roles `common` and `nfs_mailstore`."""

import uuid

import pytest


def test_systemd_has_no_failed_units(lab_host, lab_hostname):
    host = lab_host(lab_hostname)
    failed = host.check_output("systemctl list-units --failed --plain --no-legend")
    assert failed == "", f"{lab_hostname}: failed units: {failed}"


def test_every_host_name_resolves_to_its_inventory_address(lab, lab_host, lab_hostname):
    names = sorted(lab["hosts"])
    # One getent per name, in one command (a podman exec each took 30 s for the lab).
    out = lab_host(lab_hostname).check_output(
        "for name in " + " ".join(names) + "; do echo \"$name $(getent hosts $name | awk '{print $1; exit}')\"; done")
    resolved = dict(line.split(" ", 1) for line in out.splitlines())
    assert resolved == {name: lab["hosts"][name]["node_address"] for name in names}, lab_hostname


def test_hosts_reach_each_other_by_name(lab_host, lab_hostname):
    # A TCP listener on the peer, reached by name from this host.
    peer_name = "inet1" if lab_hostname != "inet1" else "lb1"
    peer = lab_host(peer_name)
    port = 39000
    peer.run(f"systemd-run --unit=probe-listener --collect timeout 20 nc -l -p {port}")
    try:
        result = lab_host(lab_hostname).run(
            f"for i in $(seq 20); do echo hello | nc -q 1 -w 2 {peer_name} {port} && exit 0; sleep 0.5; done; exit 1")
        assert result.rc == 0, result.stderr
    finally:
        peer.run("systemctl stop probe-listener")


def test_every_host_may_run_on_every_cpu(lab_host, lab_hostname):
    """The lab shares all the machine's CPUs. Mitogen pinned the processes Ansible starts to
    one CPU, the lab's containers among them, so on two cores the whole lab ran on one."""
    online = open("/sys/devices/system/cpu/online").read().strip()
    allowed = lab_host(lab_hostname).check_output("grep Cpus_allowed_list /proc/1/status").split()[-1]
    assert allowed == online, f"{lab_hostname}: systemd may run on CPUs {allowed}, the machine has {online}"


def test_only_gateways_run_the_virus_scanner(lab, lab_host, lab_hostname):
    """The lab image has every role's packages; a host runs only its roles' daemons. The
    image left Debian's clamav-milter init script on, and it held one host's boot for
    5 minutes (its start timeout)."""
    if lab_hostname in lab["groups"]["gateway"]:
        pytest.skip("a gateway scans")
    active = lab_host(lab_hostname).run("systemctl is-active clamav-milter clamav-daemon").stdout.split()
    assert set(active) <= {"inactive", "unknown"}, f"{lab_hostname}: clamav-milter, clamav-daemon: {active}"


def test_vmail_user_has_fixed_ids(lab_host, lab_hostname):
    user = lab_host(lab_hostname).user("vmail")
    assert user.exists
    assert (user.uid, user.gid) == (5000, 5000)


def test_base_services_run(lab_host, lab_hostname):
    host = lab_host(lab_hostname)
    assert host.service("rsyslog").is_running
    assert host.file("/etc/sysctl.d/60-ispmail.conf").contains("net.core.somaxconn")


@pytest.mark.group("mailbox")
def test_mail_store_is_a_mount_owned_by_vmail(lab_host, lab_hostname):
    store = lab_host(lab_hostname).file("/var/vmail")
    assert store.is_directory
    assert (store.user, store.group, store.mode) == ("vmail", "vmail", 0o770)
    assert lab_host(lab_hostname).run("mountpoint -q /var/vmail").rc == 0


def test_mailbox_servers_share_one_store(lab, lab_host):
    writer, *readers = sorted(lab["groups"]["mailbox"])
    probe = f"/var/vmail/.probe-{uuid.uuid4().hex}"
    lab_host(writer).check_output(f"runuser -u vmail -- sh -c 'echo shared > {probe}'")
    try:
        for reader in readers:
            assert lab_host(reader).check_output(f"runuser -u vmail -- cat {probe}") == "shared"
    finally:
        lab_host(writer).run(f"rm -f {probe}")


@pytest.mark.group("gateway")
def test_host_certificate_is_signed_by_the_lab_ca(lab_host, lab_hostname):
    host = lab_host(lab_hostname)
    result = host.run("openssl verify -CAfile /etc/ssl/ispmail/ca.crt /etc/ssl/ispmail/host.crt")
    assert result.rc == 0, result.stdout + result.stderr
    key = host.file("/etc/ssl/ispmail/host.key")
    assert (key.user, key.group, key.mode) == ("root", "ssl-cert", 0o640)
