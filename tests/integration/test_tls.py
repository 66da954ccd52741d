"""Every TLS port a client reaches, checked through the load balancer by an independent
tool: testssl.sh (Debian's package, installed by `make host-deps`). Fails on SSLv3,
TLS 1.0 or 1.1, NULL, anonymous, export, low or 3DES/IDEA ciphers, or a certificate
chain that does not verify against the platform CA. The JSON reports are kept under
artifacts/tls/."""

import json
import shutil
import socket
import ssl
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mailclient import address

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "tls"
TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh") or "/usr/bin/testssl"
# port: the STARTTLS protocol, or None for TLS from the first byte. ManageSieve (4190)
# is not among testssl 3.0's STARTTLS protocols: checked below with Python's ssl.
PORTS = {465: None, 587: "smtp", 993: None, 995: None, 143: "imap", 110: "pop3", 443: None}
NOT_OFFERED = ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT",
               "cipherlist_LOW", "cipherlist_3DES_IDEA"]


def ca_file(lab):
    return Path(lab["root"]) / ".cache" / f"{lab['lab_name']}-pki" / "ca.crt"


def run_testssl(lab, port, starttls):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report = ARTIFACTS / f"lb1-{port}.json"
    report.unlink(missing_ok=True)
    command = [TESTSSL, "--quiet", "--color", "0", "--warnings", "off", "--sneaky", "--add-ca", str(ca_file(lab)),
               "--jsonfile", str(report), "--protocols", "--std", "--server-defaults"]
    if starttls:
        command += ["--starttls", starttls]
    command.append(f"{address(lab, 'lb1')}:{port}")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert report.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return {finding["id"]: finding for finding in json.loads(report.read_text())}


@pytest.fixture(scope="module")
def reports(lab):
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {port: pool.submit(run_testssl, lab, port, starttls) for port, starttls in PORTS.items()}
        return {port: future.result() for port, future in futures.items()}


@pytest.mark.parametrize("port", PORTS)
def test_only_strong_protocols_and_ciphers_are_offered(reports, port):
    findings = reports[port]
    offered = {name: findings[name]["finding"] for name in NOT_OFFERED
               if name in findings and not findings[name]["finding"].startswith("not offered")}
    assert not offered, offered
    assert findings["TLS1_2"]["finding"].startswith("offered"), findings.get("TLS1_2")
    assert "TLS1_3" in findings and findings["TLS1_3"]["finding"].startswith("offered"), findings.get("TLS1_3")


@pytest.mark.parametrize("port", PORTS)
def test_the_certificate_chain_verifies_against_the_platform_ca(reports, port):
    chains = {name: finding for name, finding in reports[port].items() if name.startswith("cert_chain_of_trust")}
    assert chains, sorted(reports[port])
    assert all(finding["severity"] == "OK" for finding in chains.values()), chains


def sieve_starttls(lab, context):
    """STARTTLS on ManageSieve through lb1 (RFC 5804); the negotiated TLS version."""
    with socket.create_connection((address(lab, "lb1"), 4190), timeout=30) as raw:
        stream = raw.makefile("rb")
        while not stream.readline().startswith(b"OK"):
            pass
        raw.sendall(b"STARTTLS\r\n")
        assert stream.readline().startswith(b"OK")
        with context.wrap_socket(raw, server_hostname=address(lab, "lb1")) as tls:
            return tls.version()


def test_managesieve_offers_only_tls_1_2_and_up_with_a_chain_to_the_platform_ca(lab):
    verified = ssl.create_default_context(cafile=str(ca_file(lab)))
    assert sieve_starttls(lab, verified) in ("TLSv1.2", "TLSv1.3")
    old = ssl.create_default_context(cafile=str(ca_file(lab)))
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        sieve_starttls(lab, old)
    untrusted = ssl.create_default_context()  # the system CAs only: the chain must not verify
    with pytest.raises(ssl.SSLCertVerificationError):
        sieve_starttls(lab, untrusted)
