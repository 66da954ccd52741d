"""Clients that run inside inet1, the lab's stand-in for the outside world (and, with
python_in, in other lab containers).

inet1 has Python 3 but not the lab CA, so TLS there is unverified. Each script prints
one JSON object.
"""

import json
import shlex

from mailclient import address

# Runs inside inet1 (Python 3 there, no lab CA): one SMTP transaction, result as JSON.
SMTP_FROM_OUTSIDE = r"""
import json, smtplib, ssl, sys
a = json.loads(sys.argv[1])
out = {"ok": False}
try:
    with smtplib.SMTP(a["host"], a["port"], timeout=60) as s:
        s.ehlo("inet1.example.net")
        if a.get("raw"):
            out["replies"] = []
            for step in a["raw"]:
                s.send(step.encode())
                code, text = s.getreply()
                out["replies"].append([code, text.decode()])
        else:
            s.sendmail(a["sender"], a["rcpts"], a["text"].encode())
            out["ok"] = True
except smtplib.SMTPRecipientsRefused as e:
    out["error"] = {r: [c, m.decode()] for r, (c, m) in e.recipients.items()}
except smtplib.SMTPResponseException as e:
    out["error"] = [e.smtp_code, e.smtp_error.decode()]
except (OSError, smtplib.SMTPException) as e:
    out["error"] = str(e)
print(json.dumps(out))
"""

POP3_FROM_OUTSIDE = r"""
import json, poplib, ssl, sys
a = json.loads(sys.argv[1])
pop = poplib.POP3_SSL(a["host"], 995, context=ssl._create_unverified_context(), timeout=30)
pop.user(a["user"])
pop.pass_(a["password"])
print(json.dumps({"count": pop.stat()[0]}))
pop.quit()
"""


def python_in(lab_host, container, script, **args):
    """Run one of these scripts in a lab container; its JSON result (args may name a host)."""
    out = lab_host(container).check_output(f"python3 -c {shlex.quote(script)} {shlex.quote(json.dumps(args))}")
    return json.loads(out)


def from_inet1(lab_host, script, **args):
    return python_in(lab_host, "inet1", script, **args)


def smtp_from_inet1(lab, lab_host, gateway, port, rcpts, text, sender="someone@example.net"):
    return from_inet1(lab_host, SMTP_FROM_OUTSIDE, host=address(lab, gateway), port=port, sender=sender,
                      rcpts=rcpts, text=text)


IMAP_FROM_OUTSIDE = r"""
import imaplib, json, ssl, sys
a = json.loads(sys.argv[1])
imap = imaplib.IMAP4(a["host"], 143, timeout=30)
imap.starttls(ssl_context=ssl._create_unverified_context())
imap.login(a["user"], a["password"])
imap.logout()
print(json.dumps({"ok": True}))
"""

# A TCP connection, then (with tls) a TLS handshake: how far it got, and why it stopped.
CONNECT = r"""
import json, socket, ssl, sys
a = json.loads(sys.argv[1])
out = {"connected": False, "tls": False}
try:
    sock = socket.create_connection((a["host"], a["port"]), timeout=a["timeout"])
    out["connected"] = True
    if a.get("tls"):
        with ssl._create_unverified_context().wrap_socket(sock):
            out["tls"] = True
    sock.close()
except OSError as e:
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""
