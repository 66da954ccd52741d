"""The load balancer's configuration as the role renders it from each inventory: the
stats page (management address, operators only, HTTPS) and the keepalived pair (the
haproxy process tracked, no VRRP authentication).

Templates are rendered by Ansible itself (tests/playbook_vars.py, with the variables
where the role's tasks run); then the daemons' own checks read the result: `haproxy -c`
(the role's `validate:`) and `keepalived --config-test` (`make host-deps` installs both).
The lab has no VRRP pair, so keepalived's configuration is production's.
"""

import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ["haproxy.cfg.j2", "keepalived.conf.j2", "split.prom.j2"]
# <linux/if.h>
IFF_UP, IFF_LOOPBACK, IFF_MULTICAST = 0x1, 0x8, 0x1000
SPLIT = "__loadbalancer_split=loadbalancer_gateways | lb_pool_split(loadbalancer_gateway_ratio)"


def lb_hosts(inventory):
    return sorted(yaml.safe_load((ROOT / inventory / "hosts.yml").read_text())["all"]["children"]["lb"]["hosts"])


def vault_stand_ins(inventory):
    """A dummy for every vault_* name the inventory reads (the vault is not here)."""
    names = {name for path in (ROOT / inventory).rglob("*.yml")
             for name in re.findall(r"\bvault_\w+", path.read_text())}
    return {name: f"test-{name}" for name in sorted(names)}


def render(tmp_path, inventory, overrides):
    """{'templates': {file: text}, 'vars': {...}} for the inventory's first load balancer,
    with `overrides` set in its load balancers' host_vars."""
    override = tmp_path / "override"
    (override / "host_vars").mkdir(parents=True)
    (override / "hosts.yml").write_text("all:\n  children:\n    ungrouped: {}\n")
    for host in lb_hosts(inventory):
        (override / "host_vars" / f"{host}.yml").write_text(yaml.safe_dump(overrides))
    command = [sys.executable, str(ROOT / "tests" / "playbook_vars.py"), "-i", str(ROOT / inventory),
               "-i", str(override), "playbooks/loadbalancer.yml", "--fact", SPLIT]
    for template in TEMPLATES:
        command += ["--template", f"loadbalancer:{template}"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [entry] = json.loads(proc.stdout)
    return entry


def section(config, name):
    """The lines of one HAProxy section, without indentation."""
    match = re.search(rf"^{re.escape(name)}\n((?:  .*\n)*)", config, re.MULTILINE)
    assert match, f"no section {name!r} in:\n{config}"
    return [line.strip() for line in match.group(1).splitlines()]


def self_signed(directory):
    """host.crt and host.key, as role pki installs them (the key beside the certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lb.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (directory / "host.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "host.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return directory / "host.crt", directory / "host.key"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab")
    certificate, key = self_signed(tmp)
    entry = render(tmp, "inventories/lab", {"loadbalancer_stats_certificate": str(certificate),
                                            "loadbalancer_stats_private_key": str(key)})
    entry["tmp"] = tmp
    return entry


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    return render(tmp_path_factory.mktemp("production"), "inventories/production",
                  vault_stand_ins("inventories/production"))


def interface_here(wanted):
    """`wanted` if this machine has it, else one that is up, not loopback and can multicast
    (keepalived -t checks the instance's interface)."""
    names = [name for _, name in socket.if_nameindex()]
    if wanted in names:
        return wanted
    for name in names:
        flags = int(Path(f"/sys/class/net/{name}/flags").read_text(), 16)
        if flags & IFF_UP and flags & IFF_MULTICAST and not flags & IFF_LOOPBACK:
            return name
    return None


def test_stats_page_binds_the_management_address_with_tls(lab, production):
    for entry in (lab, production):
        v = entry["vars"]
        stats = section(entry["templates"]["haproxy.cfg.j2"], "frontend stats")
        binds = [line for line in stats if line.startswith("bind ")]
        assert binds == [f"bind {v['loadbalancer_stats_address']}:{v['loadbalancer_stats_port']} "
                         f"ssl crt {v['loadbalancer_stats_certificate']}"], stats
    # The lab: the host's node_address; production: a management address, neither the
    # node_address the services use nor a VIP.
    assert lab["vars"]["loadbalancer_stats_address"] == lab["vars"]["platform_addresses"][lab["host"]]
    v = production["vars"]
    vips = [address.split("/")[0] for address in v["loadbalancer_vrrp_virtual_addresses"]]
    assert vips and v["loadbalancer_stats_address"] not in vips + [v["platform_addresses"][production["host"]]]


def test_stats_page_lets_only_the_operators_in(lab, production):
    for entry in (lab, production):
        sources = entry["vars"]["platform_operator_networks"]
        assert sources and entry["vars"]["loadbalancer_stats_sources"] == sources
        stats = section(entry["templates"]["haproxy.cfg.j2"], "frontend stats")
        assert f"tcp-request connection reject unless {{ src {' '.join(sources)} }}" in stats, stats


def test_haproxy_accepts_the_rendered_config(lab):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.skip("haproxy is not installed (make host-deps)")
    config = lab["tmp"] / "haproxy.cfg"
    config.write_text(lab["templates"]["haproxy.cfg.j2"])
    # The key is found beside the certificate (ssl-load-extra-del-ext), as the role asserts.
    assert Path(lab["vars"]["loadbalancer_stats_private_key"]).exists()
    proc = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_exporter_binds_the_node_address(lab, production):
    for entry in (lab, production):
        v = entry["vars"]
        exporter = section(entry["templates"]["haproxy.cfg.j2"], "frontend prometheus")
        assert f"bind {v['platform_addresses'][entry['host']]}:{v['platform_metrics_ports']['haproxy']}" in exporter
        assert "http-request use-service prometheus-exporter if { path /metrics }" in exporter, exporter


def test_expected_split_matches_the_disabled_servers(lab, production):
    """ispmail_loadbalancer_server_expected is 0 exactly where haproxy.cfg disables a gateway
    (HAProxy then reports it as haproxy_server_status{state="MAINT"})."""
    for entry in (lab, production):
        config = entry["templates"]["haproxy.cfg.j2"]
        expected = {}
        for match in re.finditer(r'^ispmail_loadbalancer_server_expected\{proxy="(\w+)",pool="(\w+)",server="(\w+)"\} ([01])$',
                                 entry["templates"]["split.prom.j2"], re.MULTILINE):
            expected[match.group(1), match.group(3)] = match.group(4) == "1"
        assert expected, entry["templates"]["split.prom.j2"]
        smtp = {server for (proxy, server), on in expected.items() if on and proxy == "submission"}
        ratio = [int(n) for n in entry["vars"]["loadbalancer_gateway_ratio"].split(":")]
        assert len(smtp) == ratio[0], expected
        for (proxy, server), on in expected.items():
            [line] = [line for line in section(config, f"backend {proxy}") if line.startswith(f"server {server} ")]
            assert line.endswith(" disabled") != on, (proxy, line)


def port_acl_table(tmp_path, inventory):
    """port_acl's nftables table as the loadbalancer role's include of it renders it: a
    probe role with the loadbalancer's defaults renders the template with the include's
    vars (nothing connects to a host)."""
    tasks = yaml.safe_load((ROOT / "roles/loadbalancer/tasks/main.yml").read_text())
    included = [t for t in tasks if (t.get("ansible.builtin.include_role") or {}).get("name") == "port_acl"]
    assert len(included) == 1, "roles/loadbalancer/tasks/main.yml should include role port_acl once"
    probe = tmp_path / "roles" / "probe"
    (probe / "tasks").mkdir(parents=True)
    (probe / "defaults").mkdir()
    shutil.copy(ROOT / "roles/loadbalancer/defaults/main.yml", probe / "defaults" / "main.yml")
    template = ROOT / "roles/port_acl/templates/table.nft.j2"
    (probe / "tasks" / "main.yml").write_text(yaml.safe_dump([{
        "name": "Render", "vars": included[0]["vars"],
        "ansible.builtin.debug": {"msg": f"{{{{ lookup('ansible.builtin.template', '{template}') }}}}"}}]))
    playbook = tmp_path / "probe.yml"
    playbook.write_text(yaml.safe_dump([{"name": "Probe", "hosts": "lb", "gather_facts": False,
                                         "roles": ["platform", "probe"]}]))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_ROLES_PATH=f"{ROOT / 'roles'}:{tmp_path / 'roles'}")
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(ROOT / inventory),
                           "--limit", lb_hosts(inventory)[0], str(playbook)],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    [result] = json.loads(proc.stdout)["plays"][0]["tasks"][-1]["hosts"].values()
    return result["msg"]


def test_port_acl_drops_all_but_the_operators(lab, tmp_path):
    v = lab["vars"]
    table = port_acl_table(tmp_path, "inventories/lab")
    port, sources = v["loadbalancer_stats_port"], v["platform_operator_networks"]
    assert f"tcp dport {{ {port} }} ip saddr {{ {', '.join(sources)} }} accept\n    tcp dport {{ {port} }} drop" \
        in table, table


def test_keepalived_tracks_the_haproxy_process_without_authentication(production):
    config = production["templates"]["keepalived.conf.j2"]
    directives = [line.strip() for line in config.splitlines() if line.strip() and not line.strip().startswith("#")]
    tracked = re.search(r"^vrrp_track_process (\S+) \{\n((?:  .*\n)*)\}", config, re.MULTILINE)
    assert tracked, config
    assert set(tracked.group(2).split("\n")) >= {"  process haproxy", "  weight 0"}, tracked.group(0)
    assert re.search(rf"^  track_process \{{\n    {re.escape(tracked.group(1))}\n  \}}", config, re.MULTILINE), config
    for gone in ("authentication", "auth_type", "auth_pass", "vrrp_script", "track_script", "killall"):
        assert not [line for line in directives if gone in line], f"{gone} in:\n{config}"
    assert "state MASTER" in directives and "priority 150" in directives


def test_keepalived_accepts_the_rendered_config(production, tmp_path):
    keepalived = shutil.which("keepalived") or "/usr/sbin/keepalived"
    if not Path(keepalived).exists():
        pytest.skip("keepalived is not installed (make host-deps)")
    wanted = production["vars"]["loadbalancer_vrrp_interface"]
    here = interface_here(wanted)
    if not here:
        pytest.skip("no interface here that VRRP could use")
    config = tmp_path / "keepalived.conf"
    config.write_text(production["templates"]["keepalived.conf.j2"].replace(f"interface {wanted}\n",
                                                                            f"interface {here}\n"))
    proc = subprocess.run([keepalived, "--config-test", "-f", str(config)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
