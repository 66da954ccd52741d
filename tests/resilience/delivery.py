"""Where the run's messages ended up: the Maildirs on the shared mail store (read on the
host), the Postfix queues of the containers, and the verdict for every message."""

import os
import re
from collections import Counter

import containers  # tests/bench/side_by_side
import maildir  # tests/bench/side_by_side: folders() lists new/ and cur/ of INBOX and subfolders

# Dovecot names a delivered file <seconds>.M<microseconds>P<pid>.<host>,S=...:2,<flags> when it
# starts writing it; the name (up to ':') stays when the file moves from new/ to cur/.
DOVECOT_NAME = re.compile(r"^(\d+)\.M(\d+)P\d+\.([^,:]+)")
TOKEN = re.compile(rb"^X-Resilience-Token: *([0-9a-f]{32})", re.MULTILINE | re.IGNORECASE)
RUN = re.compile(rb"^X-Resilience-Run: *(\S+)", re.MULTILINE | re.IGNORECASE)


def name_time(name):
    """(epoch seconds, host) from a Dovecot Maildir file name, or (None, None)."""
    match = DOVECOT_NAME.match(name)
    if not match:
        return None, None
    return int(match.group(1)) + int(match.group(2)) / 1e6, match.group(3).replace("\\056", ".").split(".")[0]


def folder_name(folder_dir, root):
    """'INBOX' for the Maildir's own new/ and cur/, else the Maildir++ folder ('.Junk' -> 'Junk')."""
    parent = folder_dir.parent
    return "INBOX" if parent == root else parent.name.lstrip(".")


class MaildirIndex:
    """This run's files in the users' Maildirs, read incrementally: a file is opened once,
    and files named before the run started are not opened at all."""

    def __init__(self, maildirs, runid, since):
        self.maildirs, self.runid, self.since = maildirs, runid.encode(), since
        self.found = {}  # (user, base name) -> {token, user, folder, delivered, host}
        self.ignored = set()

    def refresh(self):
        for user, root in self.maildirs.items():
            for directory in maildir.folders(root):
                try:
                    entries = list(os.scandir(directory))
                except FileNotFoundError:
                    continue
                for entry in entries:
                    self._look_at(user, root, directory, entry)
        return self

    def _look_at(self, user, root, directory, entry):
        base = entry.name.split(":", 1)[0]
        key = (user, base)
        if key in self.ignored:
            return
        if key in self.found:  # moved from new/ to cur/, or to another folder
            self.found[key]["folder"] = folder_name(directory, root)
            return
        named, host = name_time(base)
        if named is not None and named < self.since:
            self.ignored.add(key)
            return
        try:
            with open(entry.path, "rb") as handle:
                head = handle.read(8192).split(b"\n\n", 1)[0]
            mtime = entry.stat().st_mtime
        except FileNotFoundError:  # moved meanwhile: found again under its new name
            return
        run, token = RUN.search(head), TOKEN.search(head)
        if not run or run.group(1) != self.runid or not token:
            self.ignored.add(key)
            return
        self.found[key] = {"token": token.group(1).decode(), "user": user, "folder": folder_name(directory, root),
                           "delivered": named if named is not None else mtime, "host": host, "file": base}

    def by_token(self):
        copies = {}
        for copy in self.found.values():
            copies.setdefault(copy["token"], []).append(copy)
        return copies


QUEUE_SCAN = r"""
for q in /var/spool/postfix*; do
  for d in incoming active deferred hold maildrop corrupt; do
    [ -d "$q/$d" ] || continue
    grep -rlaF 'X-Resilience-Run: RUNID' "$q/$d" 2>/dev/null | while read -r f; do
      echo "$f $(grep -aoE 'X-Resilience-Token: [0-9a-f]{32}' "$f" | head -n 1 | cut -d' ' -f2)"
    done
  done
done
"""

QUEUE_COUNT = r"""
for q in /var/spool/postfix*; do
  [ -d "$q/active" ] || continue
  echo "$q $(find "$q/incoming" "$q/active" "$q/deferred" "$q/maildrop" -type f 2>/dev/null | wc -l)"
done
"""


def queued_tokens(container_names, runid):
    """{token: ['gw1:/var/spool/postfix-mbox/deferred/...']} for this run's mail in any queue."""
    queued = {}
    for name in container_names:
        out = containers.sh(name, QUEUE_SCAN.replace("RUNID", runid), check=False)
        for line in out.splitlines():
            path, _, token = line.partition(" ")
            if token:
                queued.setdefault(token.strip(), []).append(f"{name.rsplit('-', 1)[-1]}:{path}")
    return queued


def queue_sizes(container_name):
    """{queue directory: messages in incoming, active, deferred, maildrop} in one container."""
    out = containers.sh(container_name, QUEUE_COUNT, check=False)
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if len(line.split()) == 2}


def verdict(record, expected, copies, queued):
    """The fate of one message: {status, missing, duplicates, misplaced, wrong_folder, delivered,
    delay, total_delay}. status: delivered, lost, queued, rejected, unsent, or
    unacknowledged (never acknowledged to the client, yet delivered)."""
    per_box = Counter(copy["user"] for copy in copies)
    missing = [box for box in expected if not per_box[box]]
    result = {
        "missing": missing,
        "duplicates": sum(count - 1 for box, count in per_box.items() if box in expected and count > 1),
        "misplaced": sorted(box for box in per_box if box not in expected),
        "wrong_folder": sorted({f"{c['user']}/{c['folder']}" for c in copies if c["folder"] != "INBOX"}),
        "hosts": sorted({c["host"] for c in copies if c["host"]}),
        "delivered": None, "delay": None, "total_delay": None, "queued_in": queued,
    }
    if record["accepted"] is None:
        result["status"] = "unacknowledged" if copies else record["state"]
        return result
    if missing:
        result["status"] = "queued" if queued else "lost"
        return result
    # Delivered when the last expected mailbox got its (first) copy.
    delivered = max(min(c["delivered"] for c in copies if c["user"] == box) for box in expected)
    result.update(status="delivered", delivered=delivered, delay=max(0.0, delivered - record["accepted"]),
                  total_delay=max(0.0, delivered - record["created"]))
    return result
