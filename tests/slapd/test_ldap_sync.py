"""ispmail-ldap-sync against real slapds: two providers replicating each other and a replica of both.

Nothing of LDAP is mocked; only the nft call is replaced (the host's firewall is not the
tests' to change), and one test runs the real nft inside a private network namespace.
"""

import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import ldap3
import pytest

from slapd_servers import (BASE_DN, DOMAIN_DN, REPLICATOR_DN, REPLICATOR_PW, ROOT, ROOT_DN, ROOT_PW, SLAPD, TREE_LDIF,
                           Slapd, free_port, replicated_directory)

TOOL = ROOT / "roles/ldap/files/ispmail-ldap-sync"
loader = importlib.machinery.SourceFileLoader("ispmail_ldap_sync", str(TOOL))
spec = importlib.util.spec_from_loader(loader.name, loader)
ldap_sync = importlib.util.module_from_spec(spec)
loader.exec_module(ldap_sync)

# Replication here takes milliseconds; a reconnect waits for the first syncrepl retry (5 s).
CONVERGE_SECONDS = 15


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    if not os.path.exists(SLAPD):
        pytest.skip("slapd is not installed (apt-get install slapd ldap-utils)")
    with replicated_directory(tmp_path_factory.mktemp("replicated")) as servers:
        yield servers


@pytest.fixture(scope="module")
def delta_directory(tmp_path_factory):
    """The same layout with delta-syncrepl, to compare the conflict case with."""
    if not os.path.exists(SLAPD):
        pytest.skip("slapd is not installed (apt-get install slapd ldap-utils)")
    with replicated_directory(tmp_path_factory.mktemp("delta"), delta=True, users=0) as servers:
        yield servers


@pytest.fixture(autouse=True)
def nft_calls(monkeypatch):
    """Every ruleset the tool would hand to nft, in order; nothing reaches the host's nft."""
    calls = []
    monkeypatch.setattr(ldap_sync, "apply_nft", calls.append)
    return calls


@pytest.fixture
def run_tool(tmp_path, capsys):
    """run_tool(config, *arguments) -> (exit status, stdout, stderr) of the tool's main()."""
    def run(config, *arguments):
        path = tmp_path / "ispmail-ldap-sync.json"
        path.write_text(json.dumps(config))
        capsys.readouterr()
        status = ldap_sync.main(["--config", str(path), *arguments])
        out, err = capsys.readouterr()
        return status, out, err
    return run


def config_for(local, directory, **overrides):
    """The configuration the role writes on `local`'s host; the local slapd over its ldapi socket."""
    providers = [directory.provider1, directory.provider2]
    config = {"base_dn": BASE_DN, "local_uri": local.ldapi_uri,
              "providers": [provider.uri for provider in providers],
              "self": local.uri if local in providers else None,
              "bind_dn": REPLICATOR_DN, "bind_password": REPLICATOR_PW, "start_tls": False, "timeout": 2,
              "gate_ports": [389]}
    config.update(overrides)
    return config


def status_of(config, tolerance=0.0):
    """The report `status --json` prints, for a configuration as the role writes it."""
    return ldap_sync.status(ldap_sync.checked_config(config, "test"), tolerance)


def wait_for(check, what, seconds=CONVERGE_SECONDS):
    """Poll check() until it returns something true; fail naming what did not happen."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {what}")
        time.sleep(0.1)


def add_domain(server, name):
    dn = f"ou={name},ou=domains,{BASE_DN}"
    conn = server.connect()
    conn.add(dn, ["organizationalUnit", "ispmailDomain"], {"ou": name, "ispmailDomainName": name})
    assert conn.result["result"] == 0, conn.result
    conn.unbind()
    return dn


def add_user(server, address):
    dn = f"mail={address},{DOMAIN_DN}"
    conn = server.connect()
    conn.add(dn, ["inetOrgPerson", "ispmailUser"],
             {"mail": address, "cn": address, "sn": address, "ispmailEnabled": "TRUE"})
    assert conn.result["result"] == 0, conn.result
    conn.unbind()
    return dn


def modify(server, dn, attribute, value):
    conn = server.connect()
    conn.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, [value])]})
    assert conn.result["result"] == 0, conn.result
    conn.unbind()


def everywhere(directory, dn):
    return all(server.entry(dn) for server in directory.servers)


def current(local, directory):
    """The status report of local's host once it is ready with lag 0, or None."""
    report = status_of(config_for(local, directory))
    return report if report["ready"] and report["lag_seconds"] == 0 else None


def wait_until_current(directory):
    for server in directory.servers:
        wait_for(lambda: current(server, directory), f"{server.name} current with the providers")


@contextmanager
def replicator_locked_out(directory):
    """The providers refuse the replicator's binds (ACL, not data, so nothing replicates it)."""
    rule = f'{{0}}to dn.exact="{REPLICATOR_DN}" attrs=userPassword by * none'
    providers = (directory.provider1, directory.provider2)
    for provider in providers:
        provider.modify_database_config({"olcAccess": [(ldap3.MODIFY_ADD, [rule])]})
    try:
        yield
    finally:
        for provider in providers:
            if provider.running:
                provider.modify_database_config({"olcAccess": [(ldap3.MODIFY_DELETE, ["{0}"])]})


def snapshot(conn):
    """(entries, has contextCSN) of the whole database in one search, which mdb answers from one
    read transaction: a consistent picture even while syncrepl writes."""
    conn.search(BASE_DN, "(objectClass=*)", attributes=["contextCSN"])
    entries = [item for item in conn.response if item["type"] == "searchResEntry"]
    conn.unbind()
    return len(entries), any(item["raw_attributes"].get("contextCSN") for item in entries)


@contextmanager
def watching(server):
    """Snapshots of server taken back to back while the block runs."""
    snapshots, done = [], threading.Event()

    def watch():
        while not done.is_set():
            snapshots.append(snapshot(server.connect()))
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield snapshots
    finally:
        done.set()
        watcher.join()


def standalone(tmp_path, name, server_id=None, syncprov=True):
    """An extra slapd with the same database and no replication: a new provider, a stale copy."""
    server = Slapd(tmp_path, name)
    server.configure(server_id=server_id, syncprov=syncprov)
    return server


# ---------------------------------------------------------------- replication works

def test_writes_on_either_provider_reach_everyone_and_status_says_current(directory, run_tool):
    one = add_domain(directory.provider1, "one.test")
    two = add_domain(directory.provider2, "two.test")
    wait_for(lambda: everywhere(directory, one) and everywhere(directory, two), "both domains everywhere")
    wait_until_current(directory)

    reports = {server.name: status_of(config_for(server, directory)) for server in directory.servers}
    provider_csns = reports["provider1"]["local"]["csns"]
    assert set(provider_csns) == {"1", "2"}, "each provider's write leaves its serverID in contextCSN"
    for name, report in reports.items():
        assert report["local"]["csns"] == provider_csns, name
        assert all(source["reachable"] and source["error"] is None for source in report["providers"]), name
    assert reports["provider1"]["writable"] and reports["provider2"]["writable"]
    assert not reports["consumer"]["writable"], "a replica is never writable"
    assert [p["uri"] for p in reports["provider1"]["providers"]] == [directory.provider2.uri], "self is not asked"

    status, out, _ = run_tool(config_for(directory.consumer, directory), "status")
    assert status == 0
    assert re.search(r"^\S+ lag=0s ready=true writable=false$", out, re.M), out
    assert out.count(f"provider {directory.provider1.uri}: sid 1 ") == 1, out
    status, out, _ = run_tool(config_for(directory.provider2, directory), "status", "--json")
    assert status == 0
    assert json.loads(out)["writable"] is True and json.loads(out)["reason"] == "writable"
    assert reports["consumer"]["reason"] == "ready (a replica)"


def test_one_entry_changed_on_both_providers_within_a_second_keeps_both_changes(directory):
    """An operator on each provider, a moment apart: the second change builds on the first."""
    dn = add_user(directory.provider1, "both@example.test")
    wait_for(lambda: everywhere(directory, dn), "the new user everywhere")
    modify(directory.provider1, dn, "ispmailQuota", "1073741824")
    wait_for(lambda: directory.provider2.entry(dn, ["ispmailQuota"]) == {"ispmailquota": ["1073741824"]},
             "the first change on the other provider", seconds=1)
    modify(directory.provider2, dn, "ispmailForwardTo", "elsewhere@example.net")

    wanted = ["ispmailQuota", "ispmailForwardTo", "entryCSN", "modifyTimestamp"]
    entries = wait_for(lambda: (lambda found: found if found[0] == found[1] == found[2] else None)(
        [server.entry(dn, wanted) for server in directory.servers]), "the same entry on all three")
    assert entries[0]["ispmailquota"] == ["1073741824"]
    assert entries[0]["ispmailforwardto"] == ["elsewhere@example.net"]
    wait_until_current(directory)


PLAIN_SYNCREPL_CONFLICT = ("plain syncrepl ships whole entries: changes of one entry on two providers that have not "
                           "heard of each other's lose one change")


@pytest.mark.parametrize("layout", [
    pytest.param("directory", marks=pytest.mark.xfail(strict=True, raises=AssertionError,
                                                      reason=PLAIN_SYNCREPL_CONFLICT)),
    "delta_directory"])
def test_one_entry_changed_on_both_providers_before_either_hears_of_the_other_keeps_both_changes(layout, request):
    """The conflict case (two operators at the same moment, or a provider cut off): each
    provider changes the entry before it has the other's change. A race of two modifies
    came out right by luck in some runs, so each change is made while the other provider
    is stopped: the conflict happens every time."""
    directory = request.getfixturevalue(layout)
    provider1, provider2 = directory.provider1, directory.provider2
    dn = add_user(provider1, "race@example.test")
    wait_for(lambda: everywhere(directory, dn), "the new user everywhere")
    provider2.stop()
    try:
        modify(provider1, dn, "ispmailQuota", "2000")
        provider1.stop()
        provider2.start()
        modify(provider2, dn, "ispmailForwardTo", "race@example.net")
    finally:
        provider1.start()
        if not provider2.running:
            provider2.start()
    content = ["ispmailQuota", "ispmailForwardTo"]
    entries = wait_for(lambda: (lambda found: found if found[0] == found[1] == found[2] else None)(
        [server.entry(dn, content) for server in directory.servers]), "the same entry on all three")
    assert entries[0] == {"ispmailquota": ["2000"], "ispmailforwardto": ["race@example.net"]}, entries


# ---------------------------------------------------------------- who may serve, who may write

def test_fresh_provider_is_not_writable_while_a_peer_has_data(directory, tmp_path):
    third = standalone(tmp_path, "provider3", server_id=3)
    third.start()
    try:
        config = config_for(third, directory, providers=[directory.provider1.uri, directory.provider2.uri, third.uri],
                            self=third.uri)
        report = status_of(config)
        assert report["local"]["reachable"] and report["local"]["csns"] == {}
        assert report["lag_seconds"] is None, "an empty copy has no lag to speak of"
        assert not report["ready"] and not report["writable"]
        assert report["reason"] == "not caught up with the other providers (lag=unknown, local copy empty)", report
    finally:
        third.stop()


def test_waiting_for_an_empty_copy_reports_progress_and_keeps_the_gate_closed(directory, tmp_path, capsys,
                                                                             nft_calls):
    empty = standalone(tmp_path, "empty")
    empty.start()
    try:
        seconds = iter(range(0, 1000, 3))
        config = ldap_sync.checked_config(config_for(empty, directory), "test")
        assert ldap_sync.open_when_ready(config, timeout=25, interval=1, tolerance=0,
                                         clock=lambda: next(seconds), sleep=lambda _: None) == 1
    finally:
        empty.stop()
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("waiting")]
    assert len(progress) == 2, "a line every 10 s"
    assert all("lag=unknown, local copy empty" in line for line in progress), progress
    assert nft_calls == []


def test_fresh_installation_is_ready_when_every_provider_is_empty_too(tmp_path):
    provider, replica = standalone(tmp_path, "new-provider", server_id=1), standalone(tmp_path, "new-replica")
    provider.start()
    replica.start()
    try:
        on_provider = {"base_dn": BASE_DN, "local_uri": provider.ldapi_uri, "providers": [provider.uri],
                       "self": provider.uri, "start_tls": False, "timeout": 2}
        on_replica = dict(on_provider, local_uri=replica.ldapi_uri, self=None,
                          bind_dn=ROOT_DN, bind_password=ROOT_PW)
        assert status_of(on_provider)["writable"], "a lone new provider takes the first writes"
        report = status_of(on_replica)
        assert report["ready"] and report["lag_seconds"] == 0
        provider.stop()
        report = status_of(on_replica)
        assert not report["ready"], "an empty copy is not ready while a provider that may have data is away"
    finally:
        provider.stop()
        replica.stop()


def test_stale_copy_reports_its_lag_and_opens_the_gate_only_on_timeout(directory, tmp_path, run_tool, nft_calls):
    stale = standalone(tmp_path, "stale", syncprov=False)
    stale.load(directory.consumer.dump(), write_context=False)
    stale.start()
    try:
        later = add_domain(directory.provider1, "later.test")
        wait_for(lambda: everywhere(directory, later), "a change the stale copy misses")
        wait_until_current(directory)
        config = config_for(stale, directory)
        report = status_of(config)
        assert report["local"]["csns"]["1"] < report["providers"][0]["csns"]["1"]
        assert report["lag_seconds"] > 0 and not report["ready"]

        assert run_tool(config, "status", "--max-lag", "0")[0] == 1
        status, out, _ = run_tool(config, "status", "--max-lag", "3600")
        assert status == 0 and "ready=false" in out, "a small lag passes --max-lag but is not ready"
        assert status_of(config, tolerance=3600)["ready"]

        status, out, _ = run_tool(config, "gate", "open-when-ready", "--timeout", "0.5", "--interval", "0.1")
        assert status == 0
        assert "warning" in out and "opens anyway" in out, out
        assert nft_calls == [ldap_sync.gate_ruleset(False, [389])]
    finally:
        stale.stop()


def certificates(folder, name, san):
    """A fresh CA and a certificate it signed for san (e.g. IP:127.0.0.1); returns (ca, cert, key)."""
    folder.mkdir()
    ca, ca_key, cert, key = (folder / f"{name}-{part}" for part in ("ca.pem", "ca.key", "cert.pem", "cert.key"))
    openssl = ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
    subprocess.run([*openssl, "-x509", "-keyout", ca_key, "-out", ca, "-subj", f"/CN={name} test CA"],
                   check=True, capture_output=True)
    subprocess.run([*openssl, "-keyout", key, "-out", cert, "-subj", "/CN=slapd", "-CA", ca, "-CAkey", ca_key,
                    "-addext", f"subjectAltName={san}"], check=True, capture_output=True)
    return ca, cert, key


# ldap3 2.9 checks the name with ssl.match_hostname, deprecated but present in Debian 12's Python 3.11.
@pytest.mark.filterwarnings("ignore:ssl.match_hostname:DeprecationWarning")
def test_providers_are_read_over_starttls_with_a_verified_certificate(tmp_path):
    good = certificates(tmp_path / "good", "good", "IP:127.0.0.1")
    other_ca = certificates(tmp_path / "other", "other", "IP:127.0.0.1")[0]
    wrong_name = certificates(tmp_path / "wrong", "wrong", "DNS:ldap1.invalid")
    reports = {}
    for case, (tls, ca_file) in {"verified": (good, good[0]), "unknown CA": (good, other_ca),
                                 "wrong name": (wrong_name, wrong_name[0])}.items():
        provider = Slapd(tmp_path, case.replace(" ", "-"))
        provider.configure(server_id=1, tls=tls)
        provider.load(TREE_LDIF.split("\n\n")[0] + "\n", server_id=1)
        provider.start()
        try:
            config = {"base_dn": BASE_DN, "local_uri": provider.ldapi_uri, "providers": [provider.uri],
                      "bind_dn": ROOT_DN, "bind_password": ROOT_PW, "ca_file": str(ca_file), "start_tls": True}
            reports[case] = status_of(config)["providers"][0]
        finally:
            provider.stop()
    assert reports["verified"]["reachable"] and reports["verified"]["csns"], reports["verified"]
    assert not reports["unknown CA"]["reachable"]
    assert "certificate verify failed" in reports["unknown CA"]["error"], reports["unknown CA"]
    assert not reports["wrong name"]["reachable"]
    assert "doesn't match" in reports["wrong name"]["error"], reports["wrong name"]


# ---------------------------------------------------------------- exit status and the gate itself

def test_status_exits_2_naming_the_local_slapd_that_does_not_answer(directory, run_tool):
    nobody = f"ldap://127.0.0.1:{free_port()}/"
    config = config_for(directory.consumer, directory, local_uri=nobody, local_bind_dn=ROOT_DN,
                        local_bind_password=ROOT_PW)
    status, out, err = run_tool(config, "status")
    assert status == 2
    assert f"the local slapd {nobody} does not answer" in err, err
    assert status_of(config)["reason"].startswith("slapd does not answer: "), status_of(config)
    assert f"local {nobody}: unreachable" in out


def test_bad_configuration_exits_3(run_tool):
    status, _, err = run_tool({"base_dn": BASE_DN, "providers": ["ldap://a/"], "self": "ldap://b/"}, "status")
    assert status == 3 and "self ldap://b/ is not one of the providers" in err
    status, _, err = run_tool({"base_dn": BASE_DN, "providers": [], "gate_port": [389]}, "gate", "close")
    assert status == 3 and "unknown key(s) gate_port" in err and "missing providers" in err


# Runs inside `unshare --net`: argv = host namespace, tool, config. Prints a JSON summary.
IN_NAMESPACE = """
import json, os, socket, subprocess, sys
host_namespace, tool, config = sys.argv[1:]
if os.readlink("/proc/self/ns/net") == host_namespace:
    sys.exit("still in the host's network namespace")
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
listening = []
for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    server = socket.socket(family)
    try:
        server.bind((address, 389))
    except OSError:
        continue  # no IPv6 in this namespace
    server.listen()
    listening.append((family, address, server))

def answers():
    # True: connected; False: reset at once; a dropped packet would time out and raise.
    result = {}
    for family, address, _ in listening:
        with socket.socket(family) as client:
            client.settimeout(2)
            try:
                client.connect((address, 389))
                result[address] = True
            except ConnectionRefusedError:
                result[address] = False
    return result

def gate(action):
    subprocess.run([sys.executable, tool, "--config", config, "gate", action], check=True)

def ruleset():
    return subprocess.run(["nft", "list", "ruleset"], check=True, capture_output=True, text=True).stdout

summary = {"before": answers()}
gate("open")
gate("close")
gate("close")
summary.update(closed=ruleset(), while_closed=answers())
gate("open")
gate("open")
summary.update(opened=ruleset(), while_open=answers())
print(json.dumps(summary))
"""


def test_gate_resets_local_connections_in_a_private_network_namespace(tmp_path):
    """The real nft, in a network namespace of its own: loopback clients get a reset at once."""
    if not shutil.which("nft") or subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode:
        pytest.skip("needs nft and permission to create a network namespace")
    config = tmp_path / "sync.json"
    config.write_text(json.dumps({"base_dn": BASE_DN, "providers": ["ldap://provider.invalid/"],
                                  "bind_dn": REPLICATOR_DN, "bind_password": "unused", "gate_ports": [389, 636]}))
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", IN_NAMESPACE, os.readlink("/proc/self/ns/net"),
                           str(TOOL), str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["before"] and all(summary["before"].values()), summary["before"]
    assert summary["while_closed"] == dict.fromkeys(summary["before"], False), "closed: reset, IPv4 and IPv6"
    assert summary["while_open"] == summary["before"]
    closed = summary["closed"]
    assert closed.count("table inet ispmail_ldap_gate") == 1, "closing twice leaves one table"
    assert "type filter hook input priority filter - 10; policy accept;" in closed, closed
    assert 'iif "lo" tcp dport { 389, 636 } reject with tcp reset' in closed, closed
    assert summary["opened"].strip() == ""


# ---------------------------------------------------------------- outages (these restart servers: keep them last)

def test_wiped_replica_stays_gated_until_refilled(directory, run_tool, nft_calls, monkeypatch):
    consumer = directory.consumer
    consumer.stop()
    missed = add_domain(directory.provider1, "missed.test")
    consumer.wipe()
    # The status reads the providers as their rootDN while the replicator is locked out.
    config = config_for(consumer, directory, bind_dn=ROOT_DN, bind_password=ROOT_PW)
    with replicator_locked_out(directory):
        consumer.start()
        report = status_of(config)
        assert report["local"]["reachable"] and report["local"]["csns"] == {}, report["local"]
        assert all(provider["reachable"] and provider["csns"] for provider in report["providers"])
        assert report["lag_seconds"] is None and not report["ready"]
        assert run_tool(config, "status")[0] == 1

        assert run_tool(config, "gate", "close")[0] == 0
        status, out, _ = run_tool(config, "gate", "open-when-ready", "--timeout", "0.5", "--interval", "0.1")
        assert status == 1 and "stays closed" in out, out
        assert nft_calls == [ldap_sync.gate_ruleset(True, [389])], "an empty copy keeps the gate closed"
        assert "reject with tcp reset" in nft_calls[0]

    everything = snapshot(directory.provider1.connect())[0]
    opened_on = []
    monkeypatch.setattr(ldap_sync, "apply_nft", lambda ruleset: opened_on.append((ruleset, snapshot(consumer.connect()))))
    with watching(consumer) as snapshots:
        status, out, _ = run_tool(config, "gate", "open-when-ready", "--timeout", str(CONVERGE_SECONDS),
                                  "--interval", "0.05")
    assert status == 0 and "gate open" in out, out
    assert opened_on == [(ldap_sync.gate_ruleset(False, [389]), (everything, True))], "opened on a full copy"
    assert consumer.entry(missed)
    assert any(0 < entries < everything for entries, _ in snapshots), "the refill was watched while under way"
    assert not [entries for entries, has_csn in snapshots if has_csn and entries < everything], \
        "slapd shows a contextCSN only once the refill is complete"
    assert status_of(config)["lag_seconds"] == 0


def test_provider_outages(directory, run_tool):
    provider1, provider2, consumer = directory.provider1, directory.provider2, directory.consumer
    wait_until_current(directory)
    try:
        provider1.stop()
        status, out, _ = run_tool(config_for(consumer, directory), "status")
        assert status == 0, out
        assert f"provider {provider1.uri}: unreachable: " in out
        report = status_of(config_for(consumer, directory))
        assert [p["reachable"] for p in report["providers"]] == [False, True]
        assert report["lag_seconds"] == 0 and report["ready"], "lag and readiness come from the other provider"

        during = add_domain(provider2, "during-outage.test")
        wait_for(lambda: consumer.entry(during), "the replica gets the change from the provider still up")
        wait_for(lambda: current(consumer, directory), "the replica current with provider 2")
        report = status_of(config_for(provider2, directory))
        assert report["writable"], "provider 2 holds data and its only peer is away"

        assert run_tool(config_for(provider1, directory), "status")[0] == 2

        provider2.stop()
        report = status_of(config_for(consumer, directory))
        assert not any(p["reachable"] for p in report["providers"])
        assert report["ready"] and report["lag_seconds"] is None, "a once complete copy beats none"
        assert run_tool(config_for(consumer, directory), "status")[0] == 1
    finally:
        for provider in (provider1, provider2):
            if not provider.running:
                provider.start()
