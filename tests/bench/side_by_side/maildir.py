"""Delivered mail, read on the host: the lab's mail store volume, the peers' bind mounts."""

import email.header
import os
from pathlib import Path


def folders(maildir):
    """new/ and cur/ of INBOX and of every subfolder (Junk, the keyword filters' folders)."""
    maildir = Path(maildir)
    roots = [maildir]
    try:
        roots += [maildir / entry.name for entry in os.scandir(maildir) if entry.name.startswith(".") and entry.is_dir()]
    except FileNotFoundError:
        return []
    return [root / sub for root in roots for sub in ("new", "cur")]


def count(maildirs):
    total = 0
    for maildir in maildirs:
        for folder in folders(maildir):
            try:
                total += sum(1 for _ in os.scandir(folder))
            except FileNotFoundError:
                pass
    return total


def _headers(path):
    with open(path, "rb") as handle:
        head = handle.read(8192).split(b"\n\n", 1)[0].decode("utf-8", "replace")
    fields, name = {}, None
    for line in head.splitlines():
        if line[:1] in (" ", "\t") and name:
            fields[name] += " " + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            name = name.lower()
            fields.setdefault(name, value.strip())
    return fields


def scan(maildirs, marker):
    """Files whose Message-ID contains marker: [{message_id, subject, ctime, folder}].

    ctime is when the file got its name in new/ or cur/ (the delivery's rename or link):
    Dovecot may set the mtime to the received date in whole seconds, the ctime it cannot set.
    """
    found = []
    for maildir in maildirs:
        for folder in folders(maildir):
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    fields = _headers(entry.path)
                    ctime = entry.stat().st_ctime
                except FileNotFoundError:  # moved from new/ to cur/ meanwhile
                    continue
                message_id = fields.get("message-id", "")
                if marker not in message_id:
                    continue
                subject = str(email.header.make_header(email.header.decode_header(fields.get("subject", ""))))
                found.append({"message_id": message_id.strip("<>"), "subject": subject, "ctime": ctime,
                              "folder": folder.parent.name, "path": entry.path})
    return found
