"""Role lab_legacy's stand-ins for the old qmail + vpopmail system (roles/lab_legacy/files):
vpasswd and quota parsing, the v* commands on a temporary vpopmail home, vdelivermail's
Maildir deliveries and maildirsize, and the qmail-pop3d stand-in driven over a socketpair
(UIDL, RETR's output, QUIT's unlink and new/ -> cur/<name>:2, renames, STLS)."""

import datetime
import os
import re
import socket
import ssl
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scripts import ROLES, load

sys.path.insert(0, str(ROLES / "lab_legacy" / "files"))
import vpopmail  # noqa: E402

pop3d = load("lab_legacy/files/qmail-pop3d")
vdelivermail = load("lab_legacy/files/vdelivermail")
admin = load("lab_legacy/files/vpopmail-admin")


@pytest.fixture
def config(tmp_path):
    home = tmp_path / "vpopmail"
    home.mkdir()
    return vpopmail.Config(home=str(home), uid=os.getuid(), gid=os.getgid(),
                           postfix_domains=str(tmp_path / "vpopmail_domains"),
                           postfix_recipients=str(tmp_path / "vpopmail_recipients"),
                           courier_userdb=str(tmp_path / "userdb"), sendmail=str(tmp_path / "sendmail"))


@pytest.fixture
def domains(config):
    assert admin.main(["vadddomain", "legacy.example", "postmaster-pw"], config=config) == 0
    assert admin.main(["vadduser", "-q", "1000", "taro@legacy.example", "taro-pw"], config=config) == 0
    return vpopmail.Domains(config)


# ---- vpasswd, quotas ---------------------------------------------------------------------

def test_a_vpasswd_line_has_seven_fields_and_an_eighth_is_dropped():
    line = "taro:$1$abcdefgh$xyz:1:0:Taro:/home/vpopmail/domains/legacy.example/taro:52428800S:clear"
    account = vpopmail.parse_vpasswd_line(line)
    assert (account.name, account.hash, account.dir, account.quota) == (
        "taro", "$1$abcdefgh$xyz", "/home/vpopmail/domains/legacy.example/taro", "52428800S")
    assert account.line() == line.rsplit(":", 1)[0]
    assert vpopmail.parse_vpasswd("# comment\n\n" + line + "\n") == [account]
    with pytest.raises(ValueError):
        vpopmail.parse_vpasswd_line("taro:hash:1:0")


field_text = st.text(st.characters(blacklist_characters=":\r\n", blacklist_categories=("Cs",)), max_size=20)


@given(st.lists(st.builds(vpopmail.Account, name=st.from_regex(r"[a-z][a-z0-9._-]{0,15}", fullmatch=True),
                          hash=st.from_regex(r"[./0-9A-Za-z]{13}", fullmatch=True), gecos=field_text,
                          dir=st.just("/home/vpopmail/domains/d/u"),
                          quota=st.sampled_from(["NOQUOTA", "1000S", "1000S,10C"])), max_size=5))
def test_vpasswd_written_reads_back_the_same(accounts):
    assert vpopmail.parse_vpasswd(vpopmail.format_vpasswd(accounts)) == accounts


@pytest.mark.parametrize("value, expected", [
    ("NOQUOTA", (None, None)), ("", (None, None)), ("104857600S", (104857600, None)),
    ("5000", (5000, None)), ("104857600S,1000C", (104857600, 1000)), ("50C", (None, 50)),
])
def test_quota_fields(value, expected):
    assert vpopmail.parse_quota(value) == expected
    if expected != (None, None):
        assert vpopmail.parse_quota(vpopmail.format_quota(*expected)) == expected


def test_passwords_check_against_md5_and_des_hashes():
    md5 = vpopmail.hash_password("taro-lab-password")
    des = vpopmail.hash_password("hanako-pw", "des")
    assert md5.startswith("$1$") and vpopmail.DES_RE.match(des)
    assert vpopmail.check_password("taro-lab-password", md5)
    assert not vpopmail.check_password("taro-lab-passwore", md5)
    assert vpopmail.check_password("hanako-p", des)  # DES: 8 characters count
    assert not vpopmail.check_password("x", "") and not vpopmail.check_password("x", "!locked")


# ---- the admin commands ------------------------------------------------------------------

def test_vadddomain_and_vadduser_write_vpopmail_layout_and_the_maps(config, domains):
    root = Path(config.home) / "domains" / "legacy.example"
    assert (root / ".qmail-default").read_text().startswith("| ")
    accounts = domains.accounts("legacy.example")
    assert [a.name for a in accounts] == ["postmaster", "taro"]
    taro = accounts[1]
    assert (taro.uid, taro.gid, taro.dir, taro.quota) == ("1", "0", str(root / "taro"), "1000S")
    assert all((root / "taro" / "Maildir" / sub).is_dir() for sub in ("cur", "new", "tmp"))
    assert Path(config.postfix_domains).read_text() == "legacy.example\tOK\n"
    assert "taro@legacy.example\tOK\n" in Path(config.postfix_recipients).read_text()
    userdb = Path(config.courier_userdb)
    assert oct(userdb.stat().st_mode & 0o777) == "0o600"
    line = next(line for line in userdb.read_text().splitlines() if line.startswith("taro@"))
    assert f"systempw={taro.hash}" in line and f"mail={root}/taro/Maildir" in line and "quota=1000S" in line


def test_vadduser_e_keeps_a_given_hash_and_errors_are_vpopmail_s(config, domains, capsys):
    des = vpopmail.hash_password("hanako-pw", "des")
    assert admin.main(["vadduser", "-e", des, "-c", "Hanako Y", "hanako@legacy.example"], config=config) == 0
    assert domains.lookup("HANAKO@legacy.example").hash == des
    assert domains.lookup("hanako%legacy.example").gecos == "Hanako Y"
    assert admin.main(["vadduser", "hanako@legacy.example", "x"], config=config) == 1
    assert "already exists" in capsys.readouterr().err
    assert admin.main(["vadduser", "a@nowhere.example", "x"], config=config) == 1
    assert admin.main(["vadddomain", "legacy.example", "x"], config=config) == 1


def test_vdeluser_and_vdeldomain_remove_data_and_map_entries(config, domains):
    root = Path(config.home) / "domains" / "legacy.example"
    assert admin.main(["vdeluser", "taro@legacy.example"], config=config) == 0
    assert not (root / "taro").exists() and domains.lookup("taro@legacy.example") is None
    assert "taro@" not in Path(config.postfix_recipients).read_text()
    assert admin.main(["vdeldomain", "legacy.example"], config=config) == 0
    assert not root.exists() and Path(config.postfix_domains).read_text() == ""


# ---- vdelivermail, maildirsize -----------------------------------------------------------

MESSAGE = b"From: a@example.net\nSubject: hi\n\nbody\n"


def test_delivery_writes_a_qmail_name_into_new_and_counts_it(config, domains):
    names = vdelivermail.deliver(domains, "Taro@Legacy.Example", "a@example.net", MESSAGE)
    maildir = Path(config.home) / "domains/legacy.example/taro/Maildir"
    assert re.fullmatch(rf"\d+\.M\d+P{os.getpid()}\.[^/:]+,S={len(MESSAGE)}", names[0])
    assert (maildir / "new" / names[0]).read_bytes() == MESSAGE
    assert not list((maildir / "tmp").iterdir())
    assert (maildir / "maildirsize").read_text() == f"1000S\n0 0\n{len(MESSAGE)} 1\n"


def test_over_quota_is_5_2_2_and_unknown_users_5_1_1(config, domains):
    big = b"Subject: big\n\n" + b"x" * 990
    vdelivermail.deliver(domains, "taro@legacy.example", "", MESSAGE)
    with pytest.raises(vdelivermail.Failure) as failure:
        vdelivermail.deliver(domains, "taro@legacy.example", "", big)
    assert failure.value.status == 69 and str(failure.value).startswith("5.2.2 ")
    with pytest.raises(vdelivermail.Failure) as failure:
        vdelivermail.deliver(domains, "nobody@legacy.example", "", MESSAGE)
    assert failure.value.status == 67 and str(failure.value).startswith("5.1.1 ")


def test_maildirsize_is_recalculated_when_the_quota_changes(tmp_path):
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1.M1P1.h,S=300:2,S").write_bytes(b"x" * 300)
    (maildir / ".Sent" / "cur" / "2.M1P1.h,S=200:2,S").write_bytes(b"x" * 200)
    (maildir / "maildirsize").write_text("100S\n5 1\n")
    assert vpopmail.quota_allows(maildir, "1000S", 500)
    assert (maildir / "maildirsize").read_text() == "1000S\n500 2\n"
    vpopmail.add_maildirsize(maildir, 500)
    assert vpopmail.read_maildirsize(maildir) == ("1000S", 1000, 3)
    assert not vpopmail.quota_allows(maildir, "1000S", 1)
    assert vpopmail.quota_allows(maildir, "NOQUOTA", 10**9)


def test_dot_qmail_forwards_and_keeps_a_copy(config, domains):
    log = Path(config.sendmail + ".log")
    Path(config.sendmail).write_text(f"#!/bin/sh\necho \"$@\" >> {log}\ncat >> {log}\n")
    os.chmod(config.sendmail, 0o755)
    home = Path(domains.lookup("taro@legacy.example").dir)
    (home / ".qmail").write_text("# forward\n&taro@example.net\nother@example.org\n")
    assert vdelivermail.deliver(domains, "taro@legacy.example", "s@example.net",
                                b"Return-Path: <s@example.net>\n" + MESSAGE, config.sendmail) == []
    assert log.read_bytes() == b"-i -f s@example.net -- taro@example.net other@example.org\n" + MESSAGE
    (home / ".qmail").write_text("&taro@example.net\n./Maildir/\n")
    assert len(vdelivermail.deliver(domains, "taro@legacy.example", "", MESSAGE, config.sendmail)) == 1


# ---- qmail-pop3d -------------------------------------------------------------------------

@given(st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1))
def test_uidl_is_the_name_up_to_the_first_colon(name):
    uidl = vpopmail.uidl(name)
    assert ":" not in uidl and name.startswith(uidl)
    assert vpopmail.uidl(uidl + ":2,S") == uidl


class Client:
    """The client side of a socketpair, the stand-in serving the other side in a thread."""

    def __init__(self, domains, tls_context=None):
        self.sock, server = socket.socketpair()
        self.sock.settimeout(10)
        session = pop3d.Pop3(pop3d.Connection(server), "legacy1.test", domains, tls_context=tls_context)
        self.thread = threading.Thread(target=lambda: (session.run(), server.close()), daemon=True)
        self.thread.start()
        self.file = self.sock.makefile("rb")

    def line(self):
        return self.file.readline().decode()

    def command(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def multiline(self, text):
        first = self.command(text)
        assert first.startswith("+OK"), first
        lines = []
        while (line := self.line()) != ".\r\n":
            lines.append(line)
        return lines

    def close(self):
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def mailbox(config, domains):
    maildir = Path(domains.lookup("taro@legacy.example").dir) / "Maildir"
    files = {"cur/1000.M1P1.legacy1,S=20:2,S": b"Subject: one\n\n.dot\n",
             "new/2000.M2P2.legacy1,S=21": b"Subject: two\n\nline1\nline2\n",
             "cur/3000.M3P3.legacy1,S=22:2,FS": b"Subject: three\n\nx\n",
             "new/4000.M4P4.legacy1,S=23": b"Subject: four\n\ny\n"}
    for when, (name, data) in zip((1000, 2000, 3000, 4000), files.items()):
        (maildir / name).write_bytes(data)
        os.utime(maildir / name, (when, when))
    return maildir, files


def login(domains, tls_context=None):
    client = Client(domains, tls_context)
    assert re.fullmatch(r"\+OK <\d+\.\d+@legacy1\.test>\r\n", client.line())
    return client


def test_pop3_session_and_quit_as_qmail_pop3d(domains, mailbox):
    maildir, files = mailbox
    client = login(domains)
    assert client.command("USER taro@legacy.example") == "+OK \r\n"
    assert client.command("PASS taro-pw") == "+OK \r\n"
    sizes = [len(data) for data in files.values()]
    assert client.command("STAT") == f"+OK 4 {sum(sizes)}\r\n"
    assert client.multiline("LIST") == [f"{i + 1} {size}\r\n" for i, size in enumerate(sizes)]
    uidls = [name[4:].split(":")[0] for name in files]
    assert client.multiline("UIDL") == [f"{i + 1} {uidl}\r\n" for i, uidl in enumerate(uidls)]
    assert client.command("UIDL 3") == f"+OK 3 {uidls[2]}\r\n"
    # RETR: CRLF, dot-stuffed, and qmail's extra blank line before the final dot.
    assert client.multiline("RETR 1") == ["Subject: one\r\n", "\r\n", "..dot\r\n", "\r\n"]
    assert client.multiline("TOP 2 1") == ["Subject: two\r\n", "\r\n", "line1\r\n", "\r\n"]
    assert client.command("DELE 1") == "+OK \r\n"
    assert client.command("DELE 1") == "-ERR already deleted\r\n"
    assert client.command("RETR 9") == "-ERR not that many messages\r\n"
    assert client.command("RETR 0") == "-ERR messages are counted from 1\r\n"
    assert client.command("LAST") == "+OK 1\r\n"
    # STAT still counts the deleted message (numm), not its octets.
    assert client.command("STAT") == f"+OK 4 {sum(sizes[1:])}\r\n"
    assert client.command("RSET") == "+OK \r\n" and client.command("LAST") == "+OK 0\r\n"
    assert client.command("DELE 3") == "+OK \r\n"
    assert client.command("NOOP") == "+OK \r\n"
    assert client.command("XYZZY") == "-ERR unimplemented\r\n"
    assert client.command("QUIT") == "+OK \r\n"
    client.close()
    left = sorted(str(p.relative_to(maildir)) for sub in ("cur", "new") for p in (maildir / sub).iterdir())
    # The DELE'd one is gone; every message of new/ moved to cur/ with ":2," (read or not).
    assert left == ["cur/1000.M1P1.legacy1,S=20:2,S", "cur/2000.M2P2.legacy1,S=21:2,",
                    "cur/4000.M4P4.legacy1,S=23:2,"]


def test_a_failed_login_ends_the_connection(domains, mailbox):
    maildir, files = mailbox
    client = login(domains)
    assert client.command("STAT") == "-ERR authorization first\r\n"
    assert client.command("PASS x") == "-ERR USER first\r\n"
    assert client.command("USER taro@legacy.example") == "+OK \r\n"
    assert client.command("PASS wrong") == "-ERR authorization failed\r\n"
    assert client.line() == ""
    client.close()
    assert sorted(str(p.relative_to(maildir)) for s in ("cur", "new") for p in (maildir / s).iterdir()) == \
        sorted(files)


def test_quit_without_login_changes_nothing(domains, mailbox):
    maildir, files = mailbox
    client = login(domains)
    assert "STLS\r\n" not in client.multiline("CAPA")
    assert client.command("QUIT") == "+OK \r\n"
    client.close()
    assert (maildir / "new" / "2000.M2P2.legacy1,S=21").exists()


def _certificate(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy1.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("legacy1.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "host.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "host.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return tmp_path / "host.crt", tmp_path / "host.key"


def test_stls_then_login(tmp_path, domains, mailbox):
    cert, key = _certificate(tmp_path)
    client = login(domains, pop3d.tls_context(str(cert), str(key)))
    assert "STLS\r\n" in client.multiline("CAPA")
    assert client.command("STLS").startswith("+OK")
    context = ssl.create_default_context(cafile=str(cert))
    client.sock = context.wrap_socket(client.sock, server_hostname="legacy1.test")
    client.file = client.sock.makefile("rb")
    assert "STLS\r\n" not in client.multiline("CAPA")
    assert client.command("USER taro@legacy.example") == "+OK \r\n"
    assert client.command("PASS taro-pw") == "+OK \r\n"
    assert client.command("STAT").startswith("+OK 4 ")
    assert client.command("QUIT") == "+OK \r\n"
    client.close()


@pytest.mark.parametrize("limit, expected", [
    (0, b"A: 1\r\n\r\nb1\r\n..b2\r\n\r\n.\r\n"),
    (1, b"A: 1\r\n\r\n\r\n.\r\n"),
    (2, b"A: 1\r\n\r\nb1\r\n\r\n.\r\n"),
])
def test_blast_is_qmail_s(limit, expected):
    assert pop3d.blast(b"A: 1\n\nb1\n.b2\n", limit) == expected
