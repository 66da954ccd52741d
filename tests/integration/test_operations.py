"""Operations: the health summary (playbooks/status.yml) and backups that restore
(playbooks/backup.yml, playbooks/restore.yml), run the way an operator runs them.

Users log in through the load balancer like real clients; mail arrives from inet1.
"""

import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import lab_inventory

from mailclient import PASSWORDS, imap_find, imap_login, message, wait_for
from outside import smtp_from_inet1
from test_directory_ha import apply_users, flush_login_caches, wait_until_caught_up

PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")


def playbook(lab, name, *args):
    """(rc, output, seconds) of one ansible-playbook run on the lab inventory."""
    started = time.monotonic()
    done = subprocess.run([PLAYBOOK, "-i", "inventories/lab", f"playbooks/{name}", *args], capture_output=True,
                          text=True, cwd=lab["root"], env=lab_inventory.ansible_env())
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def platform_hosts(lab):
    return [h for h in lab["groups"]["all"] if h not in lab["groups"]["internet"] + lab["groups"]["legacy"]]


# ---------------------------------------------------------------- status.yml

def test_status_is_ok_on_the_healthy_lab_and_changes_nothing(lab):
    # The suite's earlier fault tests may leave a queue or a probe round to settle.
    deadline = time.monotonic() + 180
    while True:
        rc, out, seconds = playbook(lab, "status.yml")
        print(f"status.yml took {seconds:.1f} s")
        if rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(15)
    assert rc == 0, out
    assert "problems: 0" in out, out
    for host in platform_hosts(lab):
        assert re.search(rf"^\s*{host}\s+\S+\s+(OK|WARN)\s", out, re.M), (host, out)
    for tier_word in ("split smtp=", "queues ", "ldap provider", "ldap replica", "answering lmtp imap"):
        assert tier_word in out, (tier_word, out)
    assert "changed=0" in out and "changed=1" not in out


# About 2 minutes of status runs while HAProxy notices: the full pass (ISPMAIL_FULL=1);
# make test keeps the healthy and the unreachable-host runs.
@pytest.mark.skipif(not lab_inventory.FULL, reason="full pass only (ISPMAIL_FULL=1)")
def test_status_names_a_gateway_whose_postfix_is_stopped(lab, lab_host):
    # The last gateway of the SMTP pool (the pool keeps another): its submission backend goes down.
    smtp_pool = [h for h in lab["groups"]["gateway"]][:-1]
    gateway = smtp_pool[-1]
    unit = "postfix@postfix-submit"
    lab_host(gateway).run_test(f"systemctl stop {unit}")
    try:
        # The load balancer's checks need two failures at 2 s to call it down.
        def down_in_haproxy():
            rc, out, _ = playbook(lab, "status.yml")
            return (rc, out) if f"lb1: backend submission: {gateway} is DOWN" in out else None
        found = wait_for(down_in_haproxy, 40)
        assert found, "status.yml never reported the submission backend down"
        rc, out = found
        assert rc != 0
        assert f"{gateway}: {unit} is inactive" in out, out
    finally:
        lab_host(gateway).run(f"systemctl start {unit}")

    def healthy():
        rc, out, _ = playbook(lab, "status.yml")
        return rc == 0 or print(out)
    assert wait_for(healthy, 60), "status.yml did not return to 0 after the restart"


def test_status_reports_an_unreachable_host_by_name_without_aborting(lab):
    # Hosts the inventory names that do not answer (no such container: the connection fails at once).
    rc, out, _ = playbook(lab, "status.yml", "-e", "ansible_host=ispmail-lab-no-such-host",
                          "--limit", "localhost,web1,ldap1")
    assert rc != 0
    assert "web1: unreachable" in out and "ldap1: unreachable" in out, out


# ---------------------------------------------------------------- backup and restore

def imap_ok(lab, user, password):
    try:
        imap_login(lab, "lb1", user, password).logout()
        return True
    except Exception:  # refused login, or a dropped connection while the directory restarts
        return False


def inbox_has(lab, user, subject):
    imap = imap_login(lab, "lb1", user, PASSWORDS[user])
    try:
        return imap_find(imap, "INBOX", subject)
    finally:
        imap.logout()


@pytest.fixture
def backup_users(lab, lab_host):
    """Two fresh users on the first mailbox server, each with one message; removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    users = [f"bk{n}-{tag}@example.com" for n in (1, 2)]
    mbox = lab["groups"]["mailbox"][-1]  # the first one is stopped by the alert tests
    rc, out = apply_users(lab, [{"address": u, "password": f"pw-{u}", "mailbox_host": mbox} for u in users])
    assert rc == 0, out
    subjects = {}
    for user in users:
        PASSWORDS[user] = f"pw-{user}"
        subjects[user], text = message(user)
        sent = smtp_from_inet1(lab, lab_host, "lb1", 25, [user], text)
        assert sent.get("ok"), sent
    for user in users:
        assert wait_for(lambda: inbox_has(lab, user, subjects[user]), 60), f"no mail for {user}"
    yield users, subjects
    rc, out = apply_users(lab, [{"address": u, "state": "absent"} for u in users])
    for user in users:
        PASSWORDS.pop(user, None)
        lab_host(mbox).run(f"rm -rf /var/vmail/example.com/{user.split('@')[0]}")
    assert rc == 0, out


# About 2 minutes of backup and restore: the full pass (ISPMAIL_FULL=1).
@pytest.mark.skipif(not lab_inventory.FULL, reason="full pass only (ISPMAIL_FULL=1)")
def test_backup_delete_restore_round_trip(lab, lab_host, tmp_path, backup_users):
    users, subjects = backup_users
    backups = tmp_path / "backups"
    for old in ("20000101T000000Z", "20000102T000000Z"):  # earlier runs, for the retention
        (backups / old).mkdir(parents=True)

    rc, out, seconds = playbook(lab, "backup.yml", "-e", f"backup_dir={backups}", "-e", "backup_keep=2")
    assert rc == 0, out
    runs = sorted(p.name for p in backups.iterdir())
    assert runs[0] == "20000102T000000Z" and len(runs) == 2, runs
    backup = backups / runs[1]
    files = [p for p in backup.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"backup.yml took {seconds:.1f} s, {size / 1024:.0f} KiB in {len(files)} files: "
          f"{sorted(str(p.relative_to(backup)) for p in files)}")
    assert subprocess.run(["sha256sum", "--check", "--strict", "--quiet", "MANIFEST.sha256"], cwd=backup).returncode == 0
    assert all(p.stat().st_mode & 0o077 == 0 for p in files), "backup files must be private"
    assert backup.stat().st_mode & 0o077 == 0
    for part in ("ldap/data.ldif", "ldap/config.ldif", "backup.json"):
        assert (backup / part).exists(), part
    data = (backup / "ldap/data.ldif").read_text()
    assert all(f"dn: mail={u}," in data for u in users)
    for secret in ("lab-replicator-secret", "{ARGON2}", "{CRYPT}", "{SSHA}", "userPassword"):
        assert secret not in out, secret

    # Delete both users the operator's way: the directory entry goes, the Maildir stays.
    rc, out = apply_users(lab, [{"address": u, "state": "absent"} for u in users])
    assert rc == 0, out
    wait_until_caught_up(lab, lab_host)
    flush_login_caches(lab, lab_host)
    for user in users:
        assert not imap_ok(lab, user, PASSWORDS[user]), f"{user} still logs in after the delete"
        assert lab_host(lab["groups"]["mailbox"][-1]).file(
            f"/var/vmail/example.com/{user.split('@')[0]}/Maildir").is_directory

    # A corrupt backup is refused before anything is touched.
    corrupt = tmp_path / "corrupt"
    shutil.copytree(backup, corrupt)
    with open(corrupt / "ldap/data.ldif", "a") as handle:
        handle.write("\n")
    rc, out, _ = playbook(lab, "restore.yml", "-e", f"restore_from={corrupt}")
    assert rc != 0 and "the manifest does not check out" in out and "Nothing was changed" in out, out
    rc, out, _ = playbook(lab, "restore.yml", "-e", f"restore_from={tmp_path / 'missing'}")
    assert rc != 0 and "Not restoring from" in out, out

    # --check says what it would do and does nothing.
    rc, out, _ = playbook(lab, "restore.yml", "-e", f"restore_from={backup}", "--check")
    assert rc == 0, out
    assert "Restoring" in out and "on every provider" in out, out
    assert not imap_ok(lab, users[0], PASSWORDS[users[0]])

    rc, out, seconds = playbook(lab, "restore.yml", "-e", f"restore_from={backup}")
    print(f"restore.yml took {seconds:.1f} s")
    assert rc == 0, out
    assert "every replica refilled" in out, out
    for user in users:
        # New epochs for the take-over map: the mailbox servers wait for their lease first.
        assert wait_for(lambda: imap_ok(lab, user, PASSWORDS[user]), 90), f"{user} cannot log in after the restore"
        assert inbox_has(lab, user, subjects[user]), f"{user}'s old message is gone"
    # Every copy of the directory agrees again, and a restored user is found everywhere.
    reports = wait_until_caught_up(lab, lab_host, timeout=60)
    assert all(r.get("lag_seconds") == 0 for r in reports.values()), reports
