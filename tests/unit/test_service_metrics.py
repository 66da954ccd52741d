"""The service roles' metrics collectors (node-exporter's textfile collector): slapd's
contextCSN (ispmail-ldap-sync metrics), clamd's PING and VERSION, the certificates'
expiry dates, the mail store probe and rspamd's /metrics passed on. Inputs are shaped as
the daemons send them; clamd and rspamd are small stand-ins on a socket."""

import datetime
import getpass
import http.server
import os
import socket
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from scripts import load

ldap_sync = load("ldap/files/ispmail-ldap-sync")
clamd = load("postfix_gateway/files/ispmail-metrics-clamd")
certificates = load("pki/files/ispmail-metrics-certificates")
mailstore = load("nfs_mailstore/files/ispmail-metrics-mailstore")
rspamd = load("spamcheck/files/ispmail-metrics-rspamd")

UTC = datetime.timezone.utc


def samples(text):
    """{'name{labels}': value} of the sample lines of Prometheus text format."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


# ---------------------------------------------------------------- slapd contextCSN

def test_context_csn_per_server_id_in_seconds():
    # Two providers (serverID 1 and 2) as the suffix entry holds them.
    values = ["20261206113500.123456Z#000000#001#000000", "20261206104212.000042Z#000003#002#000000"]
    times = dict(ldap_sync.parse_csn(value) for value in values)
    text = ldap_sync.format_metrics({"reachable": True, "times": times})
    assert samples(text) == {
        "ispmail_ldap_up": 1,
        'ispmail_ldap_context_csn_timestamp_seconds{sid="1"}':
            datetime.datetime(2026, 12, 6, 11, 35, 0, 123456, tzinfo=UTC).timestamp(),
        'ispmail_ldap_context_csn_timestamp_seconds{sid="2"}':
            datetime.datetime(2026, 12, 6, 10, 42, 12, 42, tzinfo=UTC).timestamp(),
    }
    assert "# TYPE ispmail_ldap_context_csn_timestamp_seconds gauge" in text


def test_server_id_is_read_as_hex_and_labelled_in_decimal():
    sid, _ = ldap_sync.parse_csn("20261206113500.000000Z#000000#00a#000000")
    text = ldap_sync.format_metrics({"reachable": True, "times": {sid: datetime.datetime(2026, 1, 1, tzinfo=UTC)}})
    assert 'ispmail_ldap_context_csn_timestamp_seconds{sid="10"}' in text


def test_slapd_down_or_empty_prints_only_up():
    assert samples(ldap_sync.format_metrics({"reachable": False, "times": {}})) == {"ispmail_ldap_up": 0}
    assert samples(ldap_sync.format_metrics({"reachable": True, "times": {}})) == {"ispmail_ldap_up": 1}


def test_not_a_csn_is_refused():
    with pytest.raises(ValueError):
        ldap_sync.parse_csn("20261206113500Z#000000#001#000000")


def test_metrics_command_is_a_subcommand():
    assert ldap_sync.parse_args(["--config", "/x.json", "metrics"]).command == "metrics"


# ---------------------------------------------------------------- clamd

@pytest.mark.parametrize("answer, expected", [
    ("ClamAV 1.0.7/27118/Sat Dec  5 08:34:12 2026", ("1.0.7", 27118, datetime.datetime(2026, 12, 5, 8, 34, 12))),
    ("ClamAV 1.0.7/27127/Mon Dec 14 09:23:45 2026", ("1.0.7", 27127, datetime.datetime(2026, 12, 14, 9, 23, 45))),
    # Local signature files only (the lab): no database version.
    ("ClamAV 1.0.7", ("1.0.7", None, None)),
])
def test_clamd_version_answer(answer, expected):
    assert clamd.parse_version(answer) == expected


def test_clamd_version_with_a_bad_date_is_refused():
    with pytest.raises(ValueError):
        clamd.parse_version("ClamAV 1.0.7/27118/yesterday")


class FakeClamd:
    """Answers z-commands on a unix socket as clamd does (NUL-terminated)."""

    def __init__(self, path, version):
        self.version = version
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                command = b""
                while not command.endswith(b"\0"):
                    command += conn.recv(64)
                answer = {b"zPING\0": "PONG", b"zVERSION\0": self.version}[command]
                conn.sendall(answer.encode() + b"\0")


def test_clamd_up_with_signature_time(tmp_path, capsys):
    path = tmp_path / "clamd.ctl"
    server = FakeClamd(path, "ClamAV 1.0.7/27118/Sat Dec  5 08:34:12 2026")
    try:
        assert clamd.main(["x", str(path), str(tmp_path)]) == 0
    finally:
        server.sock.close()
    assert samples(capsys.readouterr().out) == {
        "ispmail_clamd_up": 1,
        "ispmail_clamd_signatures_timestamp_seconds": round(datetime.datetime(2026, 12, 5, 8, 34, 12).timestamp()),
    }


def test_clamd_on_local_signatures_reports_the_file_time(tmp_path, capsys):
    path = tmp_path / "clamd.ctl"
    database = tmp_path / "ispmail-lab-eicar.ndb"
    database.write_text("Eicar-Test-Signature:0:0:58354f2150\n")
    os.utime(database, (1796550000, 1796550000))
    (tmp_path / "freshclam.dat").write_bytes(b"x")  # not a database
    server = FakeClamd(path, "ClamAV 1.0.7")
    try:
        clamd.main(["x", str(path), str(tmp_path)])
    finally:
        server.sock.close()
    assert samples(capsys.readouterr().out) == {"ispmail_clamd_up": 1,
                                                "ispmail_clamd_signatures_timestamp_seconds": 1796550000}


def test_clamd_down_is_up_zero_not_a_failure(tmp_path, capsys):
    assert clamd.main(["x", str(tmp_path / "missing.ctl"), str(tmp_path)]) == 0
    assert samples(capsys.readouterr().out) == {"ispmail_clamd_up": 0}


# ---------------------------------------------------------------- certificates

def test_openssl_enddate_answer():
    assert certificates.parse_enddate("notAfter=Dec  6 11:35:00 2027 GMT\n") == \
        datetime.datetime(2027, 12, 6, 11, 35, tzinfo=UTC).timestamp()
    assert certificates.parse_enddate("notAfter=Feb 28 23:59:59 2030 GMT") == \
        datetime.datetime(2030, 2, 28, 23, 59, 59, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError):
        certificates.parse_enddate("notBefore=Dec  6 11:35:00 2026 GMT")


def certificate(path, not_after):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw1.lab.ispmail.test")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_after - datetime.timedelta(days=90)).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_certificate_files_and_a_missing_one(tmp_path, capsys):
    if not any(os.access(os.path.join(d, "openssl"), os.X_OK) for d in os.environ["PATH"].split(os.pathsep)):
        pytest.skip("openssl is not installed")
    when = datetime.datetime(2027, 3, 1, 12, 0, 5, tzinfo=UTC)
    host = certificate(tmp_path / "host.crt", when)
    ca = certificate(tmp_path / 'c"a.crt', when + datetime.timedelta(days=3650))
    assert certificates.main(["x", str(host), str(ca)]) == 0
    found = samples(capsys.readouterr().out)
    assert found == {
        f'ispmail_certificate_not_after_timestamp_seconds{{path="{host}"}}': when.timestamp(),
        f'ispmail_certificate_not_after_timestamp_seconds{{path="{tmp_path}/c\\"a.crt"}}':
            (when + datetime.timedelta(days=3650)).timestamp(),
    }
    assert certificates.main(["x", str(host), str(tmp_path / "gone.crt")]) == 1


# ---------------------------------------------------------------- mail store probe

def test_mailstore_probe_writes_reads_and_cleans_up(tmp_path, capsys):
    assert mailstore.main(["x", str(tmp_path), getpass.getuser()]) == 0
    found = samples(capsys.readouterr().out)
    assert found["ispmail_mailstore_probe_success"] == 1
    assert set(found) == {'ispmail_mailstore_probe_seconds{operation="write"}',
                          'ispmail_mailstore_probe_seconds{operation="read"}', "ispmail_mailstore_probe_success"}
    assert all(value >= 0 for value in found.values())
    assert list(tmp_path.iterdir()) == []


def test_mailstore_probe_failure_is_success_zero(tmp_path, capsys):
    assert mailstore.main(["x", str(tmp_path / "missing"), getpass.getuser()]) == 0
    assert samples(capsys.readouterr().out) == {"ispmail_mailstore_probe_success": 0}


# ---------------------------------------------------------------- rspamd

RSPAMD_METRICS = """# HELP rspamd_build_info A metric with a constant '1' value labeled by version from which rspamd was built.
# TYPE rspamd_build_info gauge
rspamd_build_info{version="3.4"} 1
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1796558151
# HELP rspamd_scanned_total Scanned messages.
# TYPE rspamd_scanned_total counter
rspamd_scanned_total 1204
# HELP rspamd_actions_total Actions taken.
# TYPE rspamd_actions_total counter
rspamd_actions_total{type="reject"} 17
rspamd_actions_total{type="no action"} 1101
# EOF
"""


@pytest.fixture
def controller():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = RSPAMD_METRICS.encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_rspamd_metrics_passed_on_without_eof_all_named_rspamd(controller, capsys):
    assert rspamd.main(["x", f"{controller}/metrics"]) == 0
    out = capsys.readouterr().out
    assert out == RSPAMD_METRICS.replace("# EOF\n", "").replace(" process_start", " rspamd_process_start") \
        .replace("\nprocess_start", "\nrspamd_process_start")
    assert samples(out)["rspamd_process_start_time_seconds"] == 1796558151


def test_rspamd_down_fails_and_prints_nothing(controller, capsys):
    assert rspamd.main(["x", f"{controller}/nothing"]) == 1
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert rspamd.main(["x", f"http://127.0.0.1:{port}/metrics"]) == 1
    assert capsys.readouterr().out == ""
