"""Small protocol clients for the integration tests: LMTP, IMAP, POP3, ManageSieve."""

import base64
import email
import email.policy
import imaplib
import poplib
import smtplib
import socket
import ssl
import time
import uuid
from pathlib import Path


# The lab's users (inventories/lab/group_vars/ldap/accounts.yml).
PASSWORDS = {
    "alice@example.com": "alice-lab-password",
    "bob@example.com": "bob-lab-password",
    "carol@example.org": "carol-lab-password",
    "dave@example.org": "dave-lab-password",
    "erin@example.com": "erin-lab-password",
}


def wait_for(predicate, timeout=20):
    """Poll predicate until it returns something true; returns that, or None on timeout."""
    deadline = time.time() + timeout
    while True:
        result = predicate()
        if result or time.time() > deadline:
            return result or None
        time.sleep(0.5)


def tls_context(lab):
    return ssl.create_default_context(cafile=str(Path(lab["root"]) / ".cache" / f"{lab['lab_name']}-pki" / "ca.crt"))


def address(lab, host):
    return lab["hosts"][host]["node_address"]


def message(rcpt, subject=None, sender="sender@example.net", body="hello\r\n", extra_headers=""):
    subject = subject or f"test {uuid.uuid4().hex}"
    text = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@example.net>\r\n"
            f"{extra_headers}\r\n{body}")
    return subject, text


def lmtp_deliver(lab, mailbox_host, rcpt, text, sender="sender@example.net"):
    """Deliver over LMTP; returns {} or raises smtplib errors with the server's reply."""
    with smtplib.LMTP(address(lab, mailbox_host), 24, timeout=30) as lmtp:
        return lmtp.sendmail(sender, [rcpt], text.encode())


def imap_login(lab, gateway, user, password):
    imap = imaplib.IMAP4(address(lab, gateway), 143, timeout=30)
    imap.starttls(ssl_context=tls_context(lab))
    imap.login(user, password)
    return imap


def imap_find(imap, folder, subject, key="SUBJECT"):
    """UIDs in folder whose Subject (or another IMAP SEARCH key) contains subject (ASCII)."""
    status, _ = imap.select(f'"{folder}"', readonly=True)
    if status != "OK":
        return []
    status, data = imap.uid("SEARCH", None, key, f'"{subject}"')
    return data[0].split() if status == "OK" else []


def imap_messages(lab, gateway, user, subject, folder="INBOX", key="SUBJECT"):
    """Parsed messages in folder whose Subject (or `key`) contains subject, via that gateway's relay."""
    imap = imap_login(lab, gateway, user, PASSWORDS[user])
    try:
        found = []
        for uid in imap_find(imap, folder, subject, key):
            _, data = imap.uid("FETCH", uid, "(BODY.PEEK[])")
            found.append(email.message_from_bytes(data[0][1], policy=email.policy.default))
        return found
    finally:
        imap.logout()


def pop3_retrieve_all(lab, gateway, user, password):
    pop = poplib.POP3_SSL(address(lab, gateway), 995, context=tls_context(lab), timeout=30)
    try:
        pop.user(user)
        pop.pass_(password)
        count = pop.stat()[0]
        return [b"\r\n".join(pop.retr(n)[1]).decode(errors="replace") for n in range(1, count + 1)]
    finally:
        pop.quit()


class ManageSieve:
    """Just enough of RFC 5804: STARTTLS, AUTHENTICATE PLAIN, PUTSCRIPT, SETACTIVE."""

    def __init__(self, lab, gateway, port=4190):
        self.sock = socket.create_connection((address(lab, gateway), port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.response()
        self.command("STARTTLS")
        self.sock = tls_context(lab).wrap_socket(self.sock, server_hostname=address(lab, gateway))
        self.file = self.sock.makefile("rb")
        self.response()

    def response(self):
        lines = []
        while True:
            line = self.file.readline().decode().rstrip("\r\n")
            lines.append(line)
            if line.startswith(("OK", "NO", "BYE")):
                if not line.startswith("OK"):
                    raise RuntimeError("managesieve: " + " | ".join(lines))
                return lines

    def command(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.response()

    def login(self, user, password):
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.command(f'AUTHENTICATE "PLAIN" "{token}"')

    def put_active(self, name, script):
        data = script.encode()
        self.sock.sendall(f'PUTSCRIPT "{name}" {{{len(data)}+}}\r\n'.encode() + data + b"\r\n")
        self.response()
        return self.command(f'SETACTIVE "{name}"')

    def close(self):
        try:
            self.command("LOGOUT")
        except RuntimeError:
            pass
        self.sock.close()


def deployed_setting(lab_host, host, path, key):
    """The value of `key = value` in a settings file the platform wrote on a host."""
    for line in lab_host(host).file(path).content_string.splitlines():
        name, sep, value = (part.strip() for part in line.partition("="))
        if sep and name == key:
            return value
    raise KeyError(f"{key} not in {host}:{path}")


def forget_pop_before_smtp(lab, lab_host, client):
    """Drop a client's POP-before-SMTP authorisation on every gateway (a clean start)."""
    port = lab["platform_pop_before_smtp_port"]
    for gateway in lab["groups"]["gateway"]:
        lab_host(gateway).run(f"python3 -c \"import socket; s = socket.create_connection(('127.0.0.1', {port})); "
                              f"s.sendall(b'delete pbs:{client}\\r\\n'); s.recv(64)\"")
