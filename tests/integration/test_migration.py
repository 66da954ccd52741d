"""The qmail migration, domain by domain, without stopping mail (playbooks/migrate_domain.yml).

A fresh legacy domain is made on legacy1 with the old system's own commands, filled the way
its users filled it (mail through its SMTP, folders and flags over its IMAP, a POP3 client
that leaves mail on the server and keeps its UIDL list), then taken through every phase.
After prepare, subscribers use the platform's load balancer only; mail goes in through
lb1:25 from inet1. A second legacy domain on legacy1 must stay untouched throughout.
The tests of this module run in order and share the domain.
"""

import crypt  # noqa: F401  pylint: disable=deprecated-module  (DES hashes, as vpopmail wrote them)
import email
import imaplib
import poplib
import re
import smtplib
import subprocess
import threading
import time
import uuid
import warnings

import pytest

from mailclient import address, forget_pop_before_smtp, message, tls_context, wait_for
from outside import POP3_FROM_OUTSIDE, from_inet1, smtp_from_inet1

warnings.filterwarnings("ignore", category=DeprecationWarning, module="crypt")

BASE = "dc=ispmail,dc=test"
LEGACY = "legacy1"
KENJI, KENJI_PW = "kenji", "kenji-old-pw"        # MD5-crypt, as vadduser writes it
YUKI, YUKI_PW = "yuki", "yukipass"               # DES, given to vadduser -e
FOLDERS = {"INBOX.Sent": ["\\Seen"], "INBOX.Work": [], "INBOX.Work.Projects": ["\\Flagged"]}


def migrate(lab, domain, phase):
    proc = subprocess.run(["ansible-playbook", "-i", "inventories/lab", "playbooks/migrate_domain.yml",
                           "-e", f"migrate_domain={domain}", "-e", f"migrate_phase={phase}"],
                          capture_output=True, text=True, cwd=lab["root"])
    return proc.returncode, proc.stdout + proc.stderr


def migrated(lab, domain, phase):
    started = time.time()
    rc, out = migrate(lab, domain, phase)
    assert rc == 0, out[-4000:]
    return time.time() - started, out


def legacy_run(lab_host, command):
    result = lab_host(LEGACY).run(command)
    assert result.rc == 0, f"{command}: {result.stdout}{result.stderr}"
    return result.stdout


def directory(lab_host, domain, attribute, kind="ispmailDomain"):
    """Values of an attribute of the domain (or, kind ispmailUser, of its users) on ldap1."""
    key = "ispmailDomainName" if kind == "ispmailDomain" else "mail"
    value = domain if kind == "ispmailDomain" else f"*@{domain}"
    out = lab_host("ldap1").run(
        f"ldapsearch -LLL -o ldif-wrap=no -Q -Y EXTERNAL -H ldapi:/// -b ou=domains,{BASE} "
        f"'(&(objectClass={kind})({key}={value}))' {attribute}").stdout
    return sorted(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith(f"{attribute}: "))


# ---------------------------------------------------------------- clients

def imap_to(lab, host, user, password):
    imap = imaplib.IMAP4(address(lab, host), 143, timeout=30)
    imap.starttls(ssl_context=tls_context(lab))
    imap.login(user, password)
    return imap


def folder_key(name):
    """Courier's INBOX.Work.Projects and the platform's Work/Projects are one folder."""
    if name.upper() == "INBOX":
        return "INBOX"
    return re.sub(r"^INBOX\.", "", name).replace(".", "/")


def imap_state(lab, host, user, password):
    """{folder: (uidvalidity, {message-id: (uid, flags)})} of every folder."""
    imap = imap_to(lab, host, user, password)
    try:
        _, listing = imap.list()
        names = [re.match(rb'\(.*?\) "(.)" "?(.*?)"?$', line).group(2).decode() for line in listing]
        state = {}
        for name in names:
            imap.select(f'"{name}"', readonly=True)
            uidvalidity = int(imap.response("UIDVALIDITY")[1][0])
            messages = {}
            _, data = imap.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            for item in data:
                if not isinstance(item, tuple):
                    continue
                uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                flags = frozenset(re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).decode().split()) - {"\\Recent"}
                message_id = email.message_from_bytes(item[1])["Message-ID"]
                messages[message_id] = (uid, flags)
            state[folder_key(name)] = (uidvalidity, messages)
        return state
    finally:
        imap.logout()


def deliveries(lab, host, user, password):
    """[(message-id, INTERNALDATE as epoch seconds)] of every folder, with repeats."""
    imap = imap_to(lab, host, user, password)
    try:
        _, listing = imap.list()
        found = []
        for line in listing:
            name = re.match(rb'\(.*?\) "(.)" "?(.*?)"?$', line).group(2).decode()
            imap.select(f'"{name}"', readonly=True)
            _, data = imap.uid("FETCH", "1:*", "(INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            for item in data:
                if isinstance(item, tuple):
                    when = time.mktime(imaplib.Internaldate2tuple(item[0]))
                    found.append((email.message_from_bytes(item[1])["Message-ID"], when))
        return found
    finally:
        imap.logout()


def message_ids(lab, host, user, password):
    """Every Message-ID in every folder, with repeats (a duplicate shows twice)."""
    return [mid for mid, _ in deliveries(lab, host, user, password)]


def pop3_uidls(lab, host, port, user, password):
    """{uidl: message-id} of the maildrop, leaving every message on the server."""
    if port == 995:
        pop = poplib.POP3_SSL(address(lab, host), 995, context=tls_context(lab), timeout=30)
    else:
        pop = poplib.POP3(address(lab, host), port, timeout=30)
        pop.stls(context=tls_context(lab))
    try:
        pop.user(user)
        pop.pass_(password)
        found = {}
        for line in pop.uidl()[1]:
            number, uidl = line.decode().split()
            header = email.message_from_bytes(b"\r\n".join(pop.top(int(number), 0)[1]))
            found[uidl] = header["Message-ID"]
        return found
    finally:
        pop.quit()


def send_in(lab, lab_host, rcpt, tag):
    """One message from the outside world through the load balancer; its Message-ID."""
    subject, text = message(rcpt, subject=f"{tag} {uuid.uuid4().hex}")
    result = smtp_from_inet1(lab, lab_host, "lb1", 25, [rcpt], text)
    assert result["ok"], result
    return re.search(r"Message-ID: (<[^>]+>)", text).group(1)


# ---------------------------------------------------------------- the legacy domain

@pytest.fixture(scope="module")
def legacy(lab, lab_host):
    """A fresh domain on legacy1 as its users left it, and a second one that stays there."""
    tag = uuid.uuid4().hex[:6]
    domain, other = f"mig{tag}.legacy.example", f"stay{tag}.legacy.example"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        des = crypt.crypt(YUKI_PW, "yk")
    legacy_run(lab_host, f"vadddomain {domain} postmaster-old-pw && vadddomain {other} postmaster-old-pw")
    legacy_run(lab_host, f"vadduser -q 52428800 {KENJI}@{domain} {KENJI_PW} && vadduser -e '{des}' {YUKI}@{domain} "
                         f"&& vadduser ume@{other} ume-old-pw")
    kenji = f"{KENJI}@{domain}"
    # Mail the old MX received (inet1 straight to legacy1, as before the migration).
    inbox = []
    for number in range(5):
        subject, text = message(kenji, subject=f"old {number} {tag}")
        result = smtp_from_inet1(lab, lab_host, LEGACY, 25, [kenji], text)
        assert result["ok"], result
        inbox.append(re.search(r"Message-ID: (<[^>]+>)", text).group(1))
    assert wait_for(lambda: len(pop3_uidls(lab, LEGACY, 110, kenji, KENJI_PW)) == 5, timeout=30)
    # Folders and flags, made over the old IMAP server.
    imap = imap_to(lab, LEGACY, kenji, KENJI_PW)
    try:
        for folder, flags in FOLDERS.items():
            imap.create(folder)
            imap.subscribe(folder)
            for number in range(2):
                _, text = message(kenji, subject=f"{folder} {number} {tag}")
                imap.append(folder, f"({' '.join(flags)})", imaplib.Time2Internaldate(time.time()), text.encode())
        imap.select("INBOX")
        imap.store("1:2", "+FLAGS", "(\\Seen)")
        imap.store("3", "+FLAGS", "(\\Flagged)")
    finally:
        imap.logout()
    # The POP3 client has seen the first three and keeps them on the server.
    seen = dict(list(pop3_uidls(lab, LEGACY, 110, kenji, KENJI_PW).items())[:3])
    ume_before = legacy_run(lab_host, f"find /home/vpopmail/domains/{other} -type f | sort | xargs md5sum")
    yield {"domain": domain, "other": other, "kenji": kenji, "yuki": f"{YUKI}@{domain}", "tag": tag,
           "seen": seen, "ume_before": ume_before, "sent": {}, "timings": {}}


# ---------------------------------------------------------------- the phases, in order

def test_bad_input_is_refused_naming_it_and_nothing_is_written(lab, lab_host, legacy):
    tag = legacy["tag"]
    unknown = f"nosuch{tag}.legacy.example"
    rc, out = migrate(lab, unknown, "prepare")
    assert rc != 0 and unknown in out and "not found" in out, out[-3000:]
    assert directory(lab_host, unknown, "ispmailDomainName") == []

    rc, out = migrate(lab, legacy["domain"], "cutover")
    assert rc != 0 and "run prepare first" in out, out[-3000:]

    broken = f"broken{tag}.legacy.example"
    legacy_run(lab_host, f"vadddomain {broken} pm-pw && vadduser good@{broken} good-pw && vadduser bad@{broken} bad-pw")
    home = f"/home/vpopmail/domains/{broken}"
    legacy_run(lab_host, f"sed -i 's/^bad:[^:]*:/bad:{{SSHA}}notcrypt:/' {home}/vpasswd"
                         f" && touch '{home}/good/Maildir/cur/1701.x.legacy1:2,S:oops'")
    rc, out = migrate(lab, broken, "prepare")
    assert rc != 0, out[-3000:]
    assert f"bad@{broken}: unparsable password hash" in out and "notcrypt" not in out, out[-3000:]
    assert "1701.x.legacy1:2,S:oops" in out, out[-3000:]
    assert directory(lab_host, broken, "ispmailDomainName") == []
    assert directory(lab_host, broken, "mail", "ispmailUser") == []


def test_prepare_lets_users_in_through_the_platform_with_their_old_passwords(lab, lab_host, legacy):
    domain, kenji, yuki = legacy["domain"], legacy["kenji"], legacy["yuki"]
    legacy["timings"]["prepare"], _ = migrated(lab, domain, "prepare")
    assert directory(lab_host, domain, "ispmailMigrationState") == ["legacy"]
    assert directory(lab_host, domain, "ispmailMailboxHost", "ispmailUser") == [LEGACY] * 3  # and postmaster

    # POP3 and IMAP through the load balancer reach the old mail with the old passwords.
    assert pop3_uidls(lab, "lb1", 995, kenji, KENJI_PW) == pop3_uidls(lab, LEGACY, 110, kenji, KENJI_PW)
    assert imap_state(lab, "lb1", kenji, KENJI_PW) == imap_state(lab, LEGACY, kenji, KENJI_PW)
    imap_to(lab, "lb1", yuki, YUKI_PW).logout()
    with pytest.raises(imaplib.IMAP4.error):
        imap_to(lab, "lb1", yuki, "wrong-password")

    # SMTP AUTH with the old password; mail in through lb1:25 reaches the old system.
    subject, text = message(yuki, sender=kenji)
    with smtplib.SMTP(address(lab, "lb1"), 587, timeout=30) as smtp:
        smtp.starttls(context=tls_context(lab))
        smtp.login(kenji, KENJI_PW)
        smtp.sendmail(kenji, [yuki], text.encode())
    legacy["sent"]["prepare-auth"] = (yuki, re.search(r"Message-ID: (<[^>]+>)", text).group(1))
    legacy["sent"]["prepare"] = (kenji, send_in(lab, lab_host, kenji, "prepare"))
    for user, mid in legacy["sent"].values():
        password = KENJI_PW if user == kenji else YUKI_PW
        assert wait_for(lambda: mid in message_ids(lab, LEGACY, user, password), timeout=60), mid

    # POP before SMTP: a POP3 login from inet1, served by the old system, lets inet1 relay.
    inet1 = address(lab, "inet1")
    forget_pop_before_smtp(lab, lab_host, inet1)
    _, text = message("someone@example.net", sender=kenji)
    refused = smtp_from_inet1(lab, lab_host, "lb1", 2525, ["someone@example.net"], text, kenji)
    assert "Relay access denied" in str(refused), refused
    from_inet1(lab_host, POP3_FROM_OUTSIDE, host=address(lab, "lb1"), user=kenji, password=KENJI_PW)
    relayed = smtp_from_inet1(lab, lab_host, "lb1", 2525, ["someone@example.net"], text, kenji)
    forget_pop_before_smtp(lab, lab_host, inet1)
    assert relayed["ok"], relayed

    # Out of order: no cutover before a sync.
    rc, out = migrate(lab, domain, "cutover")
    assert rc != 0 and "cutover cannot follow state legacy" in out, out[-3000:]
    assert directory(lab_host, domain, "ispmailMigrationState") == ["legacy"]


def test_sync_copies_in_the_background_while_the_old_system_serves(lab, lab_host, legacy):
    domain, kenji = legacy["domain"], legacy["kenji"]
    legacy["timings"]["sync"], out = migrated(lab, domain, "sync")
    assert directory(lab_host, domain, "ispmailMigrationState") == ["syncing"]
    legacy["sent"]["sync"] = (kenji, send_in(lab, lab_host, kenji, "sync"))
    assert wait_for(lambda: legacy["sent"]["sync"][1] in message_ids(lab, "lb1", kenji, KENJI_PW), timeout=60)
    # Still the old system: its POP3 UIDLs, through the load balancer.
    assert pop3_uidls(lab, "lb1", 995, kenji, KENJI_PW) == pop3_uidls(lab, LEGACY, 110, kenji, KENJI_PW)
    again, out = migrated(lab, domain, "sync")  # incremental: a second pass
    legacy["timings"]["sync again"] = again


def test_cutover_holds_mail_briefly_and_keeps_uids_flags_uidls_and_quota(lab, lab_host, legacy):
    domain, kenji = legacy["domain"], legacy["kenji"]
    before = imap_state(lab, LEGACY, kenji, KENJI_PW)
    uidls_before = pop3_uidls(lab, LEGACY, 110, kenji, KENJI_PW)
    quota_before = legacy_run(lab_host, f"cat /home/vpopmail/domains/{domain}/{KENJI}/Maildir/maildirsize")

    # Mail keeps coming in through the whole cutover.
    during, stop = [], threading.Event()

    def keep_sending():
        while not stop.is_set():
            during.append((time.time(), send_in(lab, lab_host, kenji, "cutover")))
            time.sleep(0.5)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        legacy["timings"]["cutover"], out = migrated(lab, domain, "cutover")
    finally:
        stop.set()
        sender.join()
    assert directory(lab_host, domain, "ispmailMigrationState") == ["migrated"]
    hosts = directory(lab_host, domain, "ispmailMailboxHost", "ispmailUser")
    assert hosts and set(hosts) <= set(lab["groups"]["mailbox"])
    held = re.search(r"its mail was held ([0-9.]+) s", out)
    assert held, out[-3000:]
    legacy["timings"]["held"] = float(held.group(1))

    # Every message of every phase, exactly once, on the new side.
    expected = [mid for user, mid in legacy["sent"].values() if user == kenji] + [mid for _, mid in during]
    assert wait_for(lambda: set(expected) <= set(message_ids(lab, "lb1", kenji, KENJI_PW)), timeout=120)
    ids = message_ids(lab, "lb1", kenji, KENJI_PW)
    assert [mid for mid in set(ids) if ids.count(mid) > 1] == []
    assert legacy["sent"]["prepare-auth"][1] in message_ids(lab, "lb1", legacy["yuki"], YUKI_PW)

    # IMAP: UIDVALIDITY, UIDs and flags of every folder as the old server had them.
    after = imap_state(lab, "lb1", kenji, KENJI_PW)
    for folder, (uidvalidity, messages) in before.items():
        assert after[folder][0] == uidvalidity, folder
        for mid, (uid, flags) in messages.items():
            assert after[folder][1][mid] == (uid, flags), (folder, mid)

    # POP3: every old message keeps its UIDL; the client fetches only what it had not seen.
    uidls_after = pop3_uidls(lab, "lb1", 995, kenji, KENJI_PW)
    for uidl, mid in uidls_before.items():
        assert uidls_after.get(uidl) == mid, uidl
    unseen = {uidl for uidl in uidls_after if uidl not in legacy["seen"]}
    assert set(legacy["seen"]) <= set(uidls_after)
    assert {uidls_after[uidl] for uidl in unseen} == set(uidls_after.values()) - set(legacy["seen"].values())

    # Quota: the old limit, and the usage the old maildirsize counted plus what came since.
    limit = int(quota_before.splitlines()[0].split("S")[0])
    imap = imap_to(lab, "lb1", kenji, KENJI_PW)
    try:
        _, data = imap.getquotaroot("INBOX")
        used_kib, limit_kib = map(int, re.search(rb"STORAGE (\d+) (\d+)", data[1][0]).groups())
    finally:
        imap.logout()
    old_bytes = sum(int(line.split()[0]) for line in quota_before.splitlines()[1:])
    assert limit_kib == limit // 1024
    assert used_kib >= old_bytes // 1024

    # The delay mail saw during the cutover: acceptance at lb1 to delivery (INTERNALDATE, 1 s steps).
    delivered = dict(deliveries(lab, "lb1", kenji, KENJI_PW))
    legacy["timings"]["max delay during cutover"] = max(delivered[mid] - sent for sent, mid in during)
    legacy["timings"]["messages during cutover"] = len(during)


def test_the_other_legacy_domain_was_never_touched(lab, lab_host, legacy):
    other = legacy["other"]
    assert directory(lab_host, other, "ispmailDomainName") == []
    assert legacy_run(lab_host, f"find /home/vpopmail/domains/{other} -type f | sort | xargs md5sum") \
        == legacy["ume_before"]
    subject, text = message(f"ume@{other}")
    assert smtp_from_inet1(lab, lab_host, LEGACY, 25, [f"ume@{other}"], text)["ok"]


def test_rollback_returns_the_domain_with_its_new_mail(lab, lab_host, legacy):
    domain, kenji = legacy["domain"], legacy["kenji"]
    legacy["sent"]["migrated"] = (kenji, send_in(lab, lab_host, kenji, "migrated"))
    assert wait_for(lambda: legacy["sent"]["migrated"][1] in message_ids(lab, "lb1", kenji, KENJI_PW), timeout=60)
    legacy["timings"]["rollback"], _ = migrated(lab, domain, "rollback")
    assert directory(lab_host, domain, "ispmailMigrationState") == ["syncing"]
    assert directory(lab_host, domain, "ispmailMailboxHost", "ispmailUser") == [LEGACY] * 3  # and postmaster
    on_legacy = message_ids(lab, LEGACY, kenji, KENJI_PW)
    assert on_legacy.count(legacy["sent"]["migrated"][1]) == 1
    assert message_ids(lab, "lb1", kenji, KENJI_PW) == on_legacy  # the relay serves the old system again
    legacy["sent"]["rolled back"] = (kenji, send_in(lab, lab_host, kenji, "rolled back"))
    assert wait_for(lambda: legacy["sent"]["rolled back"][1] in message_ids(lab, LEGACY, kenji, KENJI_PW), timeout=60)


def test_cutover_again_and_finish(lab, lab_host, legacy):
    domain, kenji = legacy["domain"], legacy["kenji"]
    migrated(lab, domain, "cutover")
    legacy["timings"]["finish"], _ = migrated(lab, domain, "finish")
    assert directory(lab_host, domain, "ispmailMigrationState") == ["done"]
    legacy["sent"]["done"] = (kenji, send_in(lab, lab_host, kenji, "done"))
    expected = {mid for user, mid in legacy["sent"].values() if user == kenji}
    assert wait_for(lambda: expected <= set(message_ids(lab, "lb1", kenji, KENJI_PW)), timeout=60)
    ids = message_ids(lab, "lb1", kenji, KENJI_PW)
    assert [mid for mid in set(ids) if ids.count(mid) > 1] == []
    assert legacy["sent"]["done"][1] not in message_ids(lab, LEGACY, kenji, KENJI_PW)
    print("migration timings (s):", {key: round(value, 1) for key, value in legacy["timings"].items()})
