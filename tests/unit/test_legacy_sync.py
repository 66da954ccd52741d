"""The qmail migration's copy tool (roles/mailbox/files/ispmail-legacy-sync), run for real
against a fake vpopmail store in a temporary directory: rsync treats a local directory
source like the legacy host's rsync:// module."""

import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import scripts

TOOL = scripts.ROLES / "mailbox/files/ispmail-legacy-sync"
tool = scripts.load("mailbox/files/ispmail-legacy-sync")

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="the rsync binary is not installed")

OWNER = f"{pwd.getpwuid(os.getuid()).pw_name}:{grp.getgrgid(os.getgid()).gr_name}"
MD5 = "$1$abcdefgh$0123456789abcdefghijkl"
DES = "ab01234567890"
M1, M2, M3 = ("1700000001.M1P1.legacy1,S=10", "1700000002.M2P1.legacy1,S=20", "1700000003.M3P1.legacy1,S=30")
SENT, WORK = "1700000010.M10P1.legacy1,S=40", "1700000020.M20P1.legacy1,S=50"


def write(path, text="x", mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime:
        os.utime(path, (mtime, mtime))
    return path


def maildir(root, folders=("",)):
    for folder in folders:
        for sub in ("cur", "new", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
    return root


def vpasswd_line(user, password, quota, domain="example.org", extra=""):
    return f"{user}:{password}:1:0:{user.title()}:/home/vpopmail/domains/{domain}/{user}:{quota}{extra}\n"


@pytest.fixture
def env(tmp_path):
    """Old store (source) with example.org, the new store and index dir, and a runner."""
    source, store, index = tmp_path / "legacy", tmp_path / "vmail", tmp_path / "index"
    domain = source / "example.org"
    write(domain / "vpasswd", vpasswd_line("alice", MD5, "104857600S") + vpasswd_line("bob", DES, "")
          + vpasswd_line("gina", MD5, "NOQUOTA", extra=":cleartext"))
    alice = maildir(domain / "alice/Maildir", ("", ".Sent", ".Work.Projects"))
    write(domain / "alice/.qmail", "# forward, keep a copy\n&alice@elsewhere.example\n./Maildir/\n")
    write(alice / "cur" / f"{M1}:2,S", "one", 1_700_000_001)
    write(alice / "cur" / f"{M2}:2,RS", "two", 1_700_000_002)
    write(alice / "new" / M3, "three", 1_700_000_003)
    write(alice / ".Sent/cur" / f"{SENT}:2,S", "sent", 1_700_000_010)
    write(alice / ".Work.Projects/cur" / f"{WORK}:2,", "work", 1_700_000_020)
    write(alice / ".Sent/maildirfolder", "")
    write(alice / "maildirsize", "104857600S\n3 3\n")
    # Courier's files: uiddb version 1 in INBOX (one message long gone), version 2 in Sent.
    write(alice / "courierimapuiddb", f"1 1234567 10\n3 {M1}\n5 {M2}\n7 1699999999.M9P9.legacy1\n")
    write(alice / ".Sent/courierimapuiddb", f"2 2222 5\n4 {SENT}\n")
    write(alice / "courierimapsubscribed", "INBOX.Sent\nINBOX.Work.Projects\n")
    write(alice / "courierpop3dsizelist", f"/2 10 1234567\n{M1} 3 3:1234567\n")
    write(alice / "courierimapkeywords/:list", "Important\n\n")
    write(alice / "tmp/1700000099.M99P1.legacy1", "being delivered")
    bob = maildir(domain / "bob/Maildir")
    write(domain / "bob/.qmail", "./Maildir/\n")
    write(bob / "maildirsize", "5000000S,1000C\n0 0\n")
    maildir(domain / "gina/Maildir")

    def run(*args, check=True):
        result = subprocess.run([sys.executable, str(TOOL), "--source", str(source), "--store", str(store),
                                 "--index-dir", str(index), "--owner", OWNER, *args],
                                capture_output=True, text=True)
        assert result.returncode == (0 if check else 1), result.stderr
        return json.loads(result.stdout), result.stderr

    run.source, run.store, run.index, run.alice = source, store, index, alice
    run.local = store / "example.org/alice/Maildir"
    return run


def uidlist(path):
    return (path / "dovecot-uidlist").read_text().splitlines()


def files(path):
    return sorted(p.name for sub in ("cur", "new") for p in (path / sub).iterdir())


# --- accounts ------------------------------------------------------------------------

def test_accounts_lists_users_with_hashes_quotas_forwards_and_mail(env):
    out, _ = env("accounts", "example.org")
    assert out["changed"] is False
    users = {u["address"]: u for u in out["users"]}
    alice, bob, gina = users["alice@example.org"], users["bob@example.org"], users["gina@example.org"]
    assert alice["password_hash"] == "{CRYPT}" + MD5 and bob["password_hash"] == "{CRYPT}" + DES
    assert alice["quota_bytes"] == 104857600
    assert bob["quota_bytes"] == 5000000  # vpasswd says nothing: maildirsize's first line
    assert gina["quota_bytes"] is None    # NOQUOTA, and an 8th field is tolerated
    assert alice["forward_to"] == ["alice@elsewhere.example"] and alice["keep_copy"] is True
    assert bob["forward_to"] == [] and bob["keep_copy"] is True
    assert (alice["messages"], alice["bytes"]) == (5, len("onetwothreesentwork"))
    assert alice["folders"] == ["INBOX", "Sent", "Work/Projects"]
    assert alice["account"] == {"address": "alice@example.org", "password_hash": "{CRYPT}" + MD5,
                                "quota": 104857600, "forward_to": ["alice@elsewhere.example"], "keep_copy": True}
    assert gina["account"]["quota"] == 0  # mail_user: 0 means unlimited


def test_accounts_reports_every_problem_at_once(env):
    domain = env.source / "broken.example"
    write(domain / "vpasswd", vpasswd_line("carol", "$1$salt$tooshort", "", "broken.example")
          + vpasswd_line("dave", DES, "1000S", "broken.example")
          + vpasswd_line("eve", MD5, "lots", "broken.example"))
    maildir(domain / "carol/Maildir")
    write(domain / "dave/.qmail", "|/usr/bin/autorespond 86400 3 msg .\n./Maildir/\n")
    eve = maildir(domain / "eve/Maildir", ("", ".Old"))
    for name in ("1700000001.M1P1.x:2,SR", "1700000002.M2P1.x:2,S:3", ".hidden", "1700000003.M3 P1.x"):
        write(eve / "cur" / name)
    write(eve / ".Old/new/1700000004.M4P1.x:1,")
    write(eve / "cur/1700000005.M5P1.x:2,FSab")  # keywords after the flags: fine
    out, err = env("accounts", "broken.example", check=False)
    assert out["failed"] is True
    problems = out["problems"]
    assert "legacy user carol@broken.example: unparsable password hash" in problems
    assert "legacy user dave@broken.example: .qmail runs a program, not migrated: " \
           "|/usr/bin/autorespond 86400 3 msg ." in problems
    assert "legacy user eve@broken.example: unparsable quota 'lots'" in problems
    broken = [p for p in problems if "broken Maildir file name" in p]
    assert len(broken) == 5 and "'1700000001.M1P1.x:2,SR' in Maildir/cur" in " ".join(broken)
    assert "in Maildir/.Old/new" in " ".join(broken)
    assert len(problems) == 8
    assert "$1$salt$tooshort" not in out["msg"] + err + json.dumps(problems)
    assert len(err.strip().splitlines()) == 1 and "carol@broken.example" in err


def test_unknown_domain(env):
    out, err = env("accounts", "nowhere.example", check=False)
    assert err.strip() == f"legacy domain nowhere.example not found at {env.source}"
    out, err = env("mirror", "nowhere.example", "alice", check=False)
    assert err.strip() == f"legacy domain nowhere.example not found at {env.source}"
    out, err = env("mirror", "example.org", "zoe", check=False)
    assert "zoe@example.org" in err


# --- mirror --------------------------------------------------------------------------

def test_mirror_converts_courier_uids_pop3_uidls_and_subscriptions(env):
    stale = env.index / "example.org/alice"
    stale.mkdir(parents=True)
    out, _ = env("mirror", "example.org", "alice")
    user = out["users"][0]
    assert out["changed"] is True and user["copied"] == 5 + 2  # messages, maildirsize, maildirfolder
    assert (user["messages"], user["folders"]) == (5, ["INBOX", "Sent", "Work/Projects"])
    local = env.local
    assert files(local) == [f"{M1}:2,S", f"{M2}:2,RS", M3]
    # Courier's files stay behind, and so does what is being delivered into tmp/.
    assert not list(local.rglob("courier*")) and not list((local / "tmp").iterdir())
    assert (local / "maildirsize").exists()
    header, *records = uidlist(local)
    assert re.fullmatch(r"3 V1234567 N11 G[0-9a-f]{32}", header)
    assert records == [f"3 P{M1} :{M1}", f"5 P{M2} :{M2}", f"10 P{M3} :{M3}"]  # the gone uid 7 is skipped
    sent_header, *sent = uidlist(local / ".Sent")
    assert sent_header.startswith("3 V2222 N5 ") and sent == [f"4 P{SENT} :{SENT}"]
    work_header, *work = uidlist(local / ".Work.Projects")
    assert abs(int(work_header.split()[1][1:]) - time.time()) < 60 and work == [f"1 P{WORK} :{WORK}"]
    assert (local / "subscriptions").read_text() == "V\t2\n\nSent\nWork\tProjects\n"
    assert not stale.exists()


def test_mirror_again_changes_nothing_and_follows_deletions(env):
    env("mirror", "example.org", "alice")
    first = uidlist(env.local)
    out, _ = env("mirror", "example.org", "alice")
    assert out["changed"] is False and out["users"][0]["copied"] == 0
    assert uidlist(env.local) == first
    (env.alice / "cur" / f"{M2}:2,RS").unlink()
    shutil.rmtree(env.alice / ".Work.Projects")
    out, _ = env("mirror", "example.org", "alice")
    assert out["changed"] is True and out["users"][0]["deleted"] == 2
    assert files(env.local) == [f"{M1}:2,S", M3]
    assert uidlist(env.local)[1:] == [f"3 P{M1} :{M1}", f"10 P{M3} :{M3}"]
    assert not (env.local / ".Work.Projects").exists()  # even with the uidlist the tool wrote


def test_mirror_takes_users_in_vpopmails_hashed_dirs_beside_the_others(env):
    """vpopmail puts users of big domains in <domain>/0/<user>: mirrored one by one, the
    others in one run; each lands in <store>/<domain>/<user>/Maildir either way."""
    domain = env.source / "example.org"
    with open(domain / "vpasswd", "a") as vpasswd:
        vpasswd.write(vpasswd_line("zed", MD5, "NOQUOTA").replace("/example.org/zed", "/example.org/0/zed"))
    write(maildir(domain / "0/zed/Maildir") / "cur" / f"{M1}:2,S", "zed's", 1_700_000_001)
    out, _ = env("mirror", "example.org", "alice", "zed", "bob")
    assert [user["address"] for user in out["users"]] == ["alice@example.org", "zed@example.org", "bob@example.org"]
    assert [user["messages"] for user in out["users"]] == [5, 1, 0]
    assert files(env.store / "example.org/zed/Maildir") == [f"{M1}:2,S"]
    again, _ = env("mirror", "example.org", "alice", "zed", "bob")
    assert again["changed"] is False


def test_mirror_keeps_its_own_uids_when_courier_has_none(env):
    (env.alice / ".Work.Projects/cur/1700000030.M30P1.legacy1:2,S").write_text("later")
    env("mirror", "example.org", "alice")
    first = uidlist(env.local / ".Work.Projects")
    out, _ = env("mirror", "example.org", "alice")
    assert out["changed"] is False and uidlist(env.local / ".Work.Projects") == first
    write(env.alice / ".Work.Projects/new/1700000040.M40P1.legacy1", "newest")
    env("mirror", "example.org", "alice")
    header, *records = uidlist(env.local / ".Work.Projects")
    assert header == first[0].replace(" N3 ", " N4 ") and records[:2] == first[1:]
    assert records[2] == "3 P1700000040.M40P1.legacy1 :1700000040.M40P1.legacy1"


# --- merge and rollback --------------------------------------------------------------

def test_merge_copies_only_unseen_base_names(env):
    env("mirror", "example.org", "alice")
    # After cutover: Dovecot moved M3 to cur/ with a flag; on the old side a flag changed and
    # two late messages arrived.
    (env.local / "new" / M3).rename(env.local / "cur" / f"{M3}:2,S")
    (env.alice / "cur" / f"{M1}:2,S").rename(env.alice / "cur" / f"{M1}:2,FS")
    write(env.alice / "new/1700000100.M100P1.legacy1", "late")
    write(env.alice / ".Sent/cur/1700000101.M101P1.legacy1:2,S", "late sent")
    write(env.alice / "cur/1700000102.M102P1.odd[1]*?:2,S", "odd name")  # rsync wildcards
    out, _ = env("merge", "example.org", "alice")
    assert out["changed"] is True and out["users"][0]["copied"] == 3
    assert out["users"][0]["folders"] == {"INBOX": 2, "Sent": 1}
    assert files(env.local) == [f"{M1}:2,S", f"{M2}:2,RS", f"{M3}:2,S", "1700000100.M100P1.legacy1",
                                "1700000102.M102P1.odd[1]*?:2,S"]
    assert not list((env.local / "tmp").iterdir())
    assert (env.local / ".Sent/new/1700000101.M101P1.legacy1:2,S").read_text() == "late sent"
    assert len(uidlist(env.local)) == 4  # Dovecot numbers the late ones itself
    out, _ = env("merge", "example.org", "alice")
    assert out["changed"] is False and out["users"][0]["copied"] == 0


def test_rollback_copies_back_only_new_messages(env):
    env("mirror", "example.org", "alice")
    (env.local / "cur" / f"{M1}:2,S").rename(env.local / "cur" / f"{M1}:2,RS")
    write(env.local / "new/1800000000.M1P7.mailbox1,S=3", "new")
    write(env.local / ".Sent/cur/1800000001.M2P7.mailbox1,S=4:2,S", "sent")
    maildir(env.local / ".Archive")
    write(env.local / ".Archive/cur/1800000002.M3P7.mailbox1:2,S", "archived")
    out, _ = env("rollback", "example.org", "alice")
    user = out["users"][0]
    assert out["changed"] is True and user["copied"] == 3 and user["created_folders"] == ["Archive"]
    assert (env.alice / "new/1800000000.M1P7.mailbox1,S=3").read_text() == "new"
    assert (env.alice / ".Sent/new/1800000001.M2P7.mailbox1,S=4:2,S").read_text() == "sent"
    assert (env.alice / ".Archive/new/1800000002.M3P7.mailbox1:2,S").read_text() == "archived"
    assert (env.alice / ".Archive/maildirfolder").exists() and (env.alice / ".Archive/tmp").is_dir()
    assert (env.alice / "cur" / f"{M1}:2,S").exists() and not list(env.alice.rglob(f"{M1}:2,RS"))
    assert not (env.alice / "dovecot-uidlist").exists() and not (env.alice / "subscriptions").exists()
    out, _ = env("rollback", "example.org", "alice")
    assert out["changed"] is False


# --- pieces --------------------------------------------------------------------------

def test_listing_of_a_remote_module_parses_like_a_local_one():
    text = ("drwx------          4,096 2024/01/02 03:04:05 .\n"
            "-rw-------          1,234 2024/01/02 03:04:05 alice/Maildir/cur/17.M1P1.h,S=1234:2,S\n"
            "-rw-------             12 2024/01/02 03:04:05 alice/Maildir/cur/with\\#040space\n"
            "lrwxrwxrwx              7 2024/01/02 03:04:05 link -> target\n")
    assert tool.parse_listing(text) == {".": ("d", 4096), "alice/Maildir/cur/17.M1P1.h,S=1234:2,S": ("-", 1234),
                                        "alice/Maildir/cur/with space": ("-", 12), "link": ("l", 7)}


def test_quota_and_qmail_parsing():
    assert [tool.parse_quota(q) for q in ("NOQUOTA", "", "5S", "5S,9C", "7", "9C")] == [None, None, 5, 5, 7, None]
    with pytest.raises(ValueError):
        tool.parse_quota("5M")
    assert tool.parse_qmail("./Maildir\n", "a@b") == ([], True, [])
    assert tool.parse_qmail("x@y\n&z@w\n", "a@b") == (["x@y", "z@w"], False, [])
    assert tool.parse_qmail("/var/mail/a\n", "a@b")[2] == ["legacy user a@b: .qmail delivers to a file, "
                                                           "not migrated: /var/mail/a"]


def test_subscriptions_keep_inbox_and_drop_duplicates():
    assert tool.format_subscriptions("INBOX\ninbox.Sent\nINBOX.Sent\n\n") == "V\t2\n\nINBOX\nSent\n"


base_names = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":/"),
                     min_size=1, max_size=40).filter(lambda b: not b.startswith("."))
infos = st.builds(lambda flags, keywords: ":2," + "".join(sorted(flags)) + keywords,
                  st.sets(st.sampled_from("DFPRST")), st.text(st.sampled_from("abcxyz"), max_size=3))


@given(st.dictionaries(base_names, st.one_of(st.just(""), infos), min_size=1, max_size=8),
       st.integers(1, 2**31), st.data())
def test_valid_names_give_colon_free_uidls_that_survive_the_uidlist(names, uidvalidity, data):
    messages = {base + info: (1, data.draw(st.integers(0, 2**31))) for base, info in names.items()}
    courier = (uidvalidity, 5, {base: uid for uid, base in enumerate(sorted(names)[:2], 1)})
    for name in messages:
        assert not tool.maildir_name_problem(name) and ":" not in tool.base_name(name)
    text = tool.build_uidlist(messages, courier, None, 0)
    parsed_uidvalidity, nextuid, guid, records = tool.parse_uidlist(text)
    assert (parsed_uidvalidity, len(guid)) == (uidvalidity, 32)
    assert {base: pop3 for base, (uid, pop3) in records.items()} == {base: base for base in names}
    uids = [uid for uid, _ in records.values()]
    assert len(set(uids)) == len(uids) and max(uids) < nextuid
    assert all(records[base][0] == uid for base, uid in courier[2].items())
    # Reading its own file back, the tool writes the same one again.
    assert tool.build_uidlist(messages, courier, tool.parse_uidlist(text), 0) == text
