"""The mailbox take-over agent's rules (roles/mailbox_takeover/files/ispmail-takeover), on
fake clocks and a fake directory: the lease, when a holder opens and drops a slot, the held
file, the sessions it ends, the rendezvous choice, the gateways' votes and quorum and the
compare-and-swap."""

import importlib.machinery
import importlib.util
import json
import math
import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

AGENT = Path(__file__).resolve().parents[2] / "roles/mailbox_takeover/files/ispmail-takeover"
loader = importlib.machinery.SourceFileLoader("ispmail_takeover", str(AGENT))
spec = importlib.util.spec_from_loader(loader.name, loader)
agent = importlib.util.module_from_spec(spec)
sys.dont_write_bytecode, _bytecode = True, sys.dont_write_bytecode  # no __pycache__ in the role
loader.exec_module(agent)
sys.dont_write_bytecode = _bytecode

P1, P2 = "ldap://ldap1.ispmail.test/", "ldap://ldap2.ispmail.test/"
L, MARGIN, EXTRA = 20.0, 6.0, 2.0


def slot_map(holders, epoch=1):
    """{n: Slot} from {n: holder} (or a holder for slots 0..3)."""
    if isinstance(holders, str):
        holders = {n: holders for n in range(4)}
    return {n: agent.Slot(h, epoch) for n, h in holders.items()}


def holder(known=None, providers=(P1, P2)):
    return agent.Holder("mbox1", providers, lease=L, fence_margin=MARGIN, open_margin=EXTRA, known=known)


def reads(now, *maps):
    """{provider: Read} sent at now (a map None: that provider failed)."""
    return {p: agent.Read(now, m, "" if m is not None else "down") for p, m in zip((P1, P2), maps)}


# Logging helpers --------------------------------------------------------------------------

def test_ranges_compress_slot_numbers():
    assert agent.ranges([5, 0, 1, 2, 7, 8, 2]) == "0-2,5,7-8"
    assert agent.ranges([]) == "none"
    assert agent.describe({0: 1, 1: 1, 2: 1, 9: 3}) == "0-2 at epoch 1, 9 at epoch 3"


@given(st.sets(st.integers(0, 300)))
def test_ranges_lose_no_slot(numbers):
    text = agent.ranges(numbers)
    back = set()
    for part in text.split(",") if numbers else []:
        low, _, high = part.partition("-")
        back |= set(range(int(low), int(high or low) + 1))
    assert back == numbers


def test_slot_entries_parse_and_skip_broken_ones():
    entries = [{"cn": ["3"], "ispmailMailboxHost": ["mbox1"], "ispmailSlotEpoch": ["7"], "ispmailSlotHome": ["mbox2"]},
               {"CN": ["4"], "ISPMAILMAILBOXHOST": ["mbox2"], "ispmailslotepoch": ["1"]},
               {"cn": ["x"], "ispmailMailboxHost": ["mbox1"], "ispmailSlotEpoch": ["1"]},
               {"cn": ["5"], "ispmailSlotEpoch": ["1"]},
               {"cn": ["6"], "ispmailMailboxHost": ["mbox1"], "ispmailSlotEpoch": ["one"]}]
    assert agent.parse_slots(entries) == {3: agent.Slot("mbox1", 7, "mbox2"), 4: agent.Slot("mbox2", 1)}


def test_slot_number_of_a_user_slot_dn():
    base = "ou=slots,dc=ispmail,dc=test"
    assert agent.slot_number("cn=17,ou=slots,dc=ispmail,dc=test", base) == 17
    assert agent.slot_number("CN=17, OU=Slots, DC=ispmail, DC=test", base) == 17
    assert agent.slot_number("cn=17,ou=domains,dc=ispmail,dc=test", base) is None
    assert agent.slot_number("cn=mbox1,ou=slots,dc=ispmail,dc=test", base) is None


def test_slot_dns_tolerate_case_and_spaces():
    base = "ou=slots,dc=ispmail,dc=test"
    assert agent.slot_number("CN = 17 , OU = Slots , DC = ispmail , DC = test", base) == 17
    assert agent.slot_number("cn=17,ou=slots,dc=isp mail,dc=test", base) is None  # a value's own spaces count
    assert agent.user_slot("cn=17,ou=slots,dc=ispmail,dc=test", base) == 17
    assert agent.user_slot(None, base) == agent.user_slot("", base) == agent.user_slot("  ", base) == agent.PINNED


def user_directory(slots):
    """A local replica with one user per {mail: ispmailMailboxSlot or None}."""
    return FakeArbiter({f"mail={mail},ou=domains,{BASE}": {"mail": [mail], **({"ispmailMailboxSlot": [slot]} if slot
                                                                               else {})}
                        for mail, slot in slots.items()})


def test_a_slot_dn_that_names_no_slot_of_the_map_is_never_open():
    """Only no ispmailMailboxSlot at all makes a pinned user, whom the holder leaves to Dovecot's
    check; any other value that is not cn=<n>,ou=slots,<base> is a slot not open here."""
    users = {"ann": f"cn=3,ou=slots,{BASE}", "spaced": "CN = 3 , OU = Slots , DC = ispmail , DC = test",
             "other-map": "cn=3,ou=slots,dc=other,dc=test", "not-the-map": f"cn=3,ou=elsewhere,{BASE}",
             "not-a-number": f"cn=x3,ou=slots,{BASE}", "server-entry": f"cn=mbox1,ou=slots,{BASE}",
             "pinned": None}
    found = agent.UserSlots(Direct(user_directory(users)), BASE)(list(users) + ["unknown"])
    assert agent.sessions_to_end(list(found), found, {3}) == ["not-a-number", "not-the-map", "other-map",
                                                              "server-entry"]
    assert found["ann"] == found["spaced"] == 3 and found["pinned"] == found["unknown"] == agent.PINNED
    assert found["other-map"] == agent.UNPARSABLE


def test_user_lookups_ping_the_watchdog_per_chunk():
    told = []
    users = {f"u{n}": f"cn=1,ou=slots,{BASE}" for n in range(2 * agent.LOOKUP_CHUNK + 1)}
    slots = agent.UserSlots(Direct(user_directory(users)), BASE, notify=told.append)
    assert set(slots(list(users)).values()) == {1}
    assert told == ["WATCHDOG=1"] * 3
    assert slots.wanted(list(users)) == [] and slots.cached(["u0", "nobody"]) == {"u0": 1, "nobody": None}


# The lease --------------------------------------------------------------------------------

def test_lease_is_valid_until_lease_minus_margin_after_the_read_was_sent():
    h = holder()
    assert not h.lease_valid(0.0) and h.lease_age(0.0) is None
    h.update(3.0, reads(1.0, slot_map("mbox1"), None))  # sent at 1, answered at 3
    assert h.lease_age(3.0) == 2.0
    assert h.lease_valid(1.0 + L - MARGIN - 0.001)
    assert not h.lease_valid(1.0 + L - MARGIN)
    assert h.expires() == math.floor(1.0 + L - MARGIN)
    assert h.held_expiry(3.0) == h.expires() and h.held_expiry(1.0 + L - MARGIN) == 0


def test_a_late_answer_counts_from_when_it_was_sent():
    h = holder()
    h.update(10.0, {P1: agent.Read(10.0, slot_map("mbox1")), P2: None})
    h.update(14.0, {P1: None, P2: agent.Read(2.0, slot_map("mbox1"))})  # hung since 2, answered now
    assert h.lease_age(14.0) == 4.0
    assert h.expires() == math.floor(10.0 + L - MARGIN)  # the older read extends nothing


def test_no_lease_before_the_first_read():
    h = holder()
    assert h.expires() is None and h.held_expiry(5.0) == 0
    assert h.check(5.0).dropped == {}


# Opening ----------------------------------------------------------------------------------

def run_rounds(h, start, end, maps, step=4.0):
    """Rounds every step seconds from start while < end; returns {slot: time opened}."""
    opened, now = {}, start
    while now < end:
        outcome = h.update(now, reads(now, *maps(now)))
        opened.update({n: now for n in outcome.opened})
        now += step
    return opened


def test_a_new_slot_opens_lease_plus_margin_after_every_provider_showed_it():
    h = holder()
    opened = run_rounds(h, 0.0, 40.0, lambda now: (slot_map("mbox1"), slot_map("mbox1")))
    assert set(opened.values()) == {24.0}  # the first round at or after 0 + L + 2
    assert h.open == {0: 1, 1: 1, 2: 1, 3: 1}
    assert h.known == h.open


def test_the_wait_starts_when_every_provider_agrees():
    h = holder()
    # ldap2 still has the old holder until 8 s: the wait starts at 8.
    opened = run_rounds(h, 0.0, 40.0, lambda now: (slot_map("mbox1"), slot_map("mbox2" if now < 8 else "mbox1")))
    assert set(opened.values()) == {32.0}


def test_one_provider_alone_never_starts_the_wait():
    h = holder()
    opened = run_rounds(h, 0.0, 60.0, lambda now: (slot_map("mbox1"), None))
    assert opened == {} and h.pending == {} and h.lease_valid(56.0)


def test_a_provider_missing_after_the_agreement_does_not_restart_the_wait():
    h = holder()
    opened = run_rounds(h, 0.0, 40.0, lambda now: (slot_map("mbox1"), slot_map("mbox1") if now < 5 else None))
    assert set(opened.values()) == {24.0}


def test_any_read_showing_otherwise_restarts_the_wait():
    h = holder()
    opened = run_rounds(h, 0.0, 60.0, lambda now: (
        slot_map("mbox1"), slot_map("mbox2") if now == 12.0 else slot_map("mbox1")))
    assert set(opened.values()) == {40.0}  # agreed again at 16


def test_a_slot_held_before_reopens_at_once_with_one_provider_down():
    h = holder(known={0: 1, 1: 1})
    outcome = h.update(0.5, reads(0.0, slot_map("mbox1"), None))
    assert outcome.opened == {0: 1, 1: 1}
    assert h.pending == {}  # 2 and 3 were never held: they wait for both providers


def test_a_slot_held_before_stays_shut_when_a_provider_says_otherwise():
    h = holder(known={0: 1, 1: 1})
    outcome = h.update(0.5, reads(0.0, slot_map("mbox1"), slot_map({0: "mbox2", 1: "mbox1"}, epoch=1)))
    assert outcome.opened == {1: 1}
    assert h.known == {1: 1}  # 0 is forgotten: it is someone else's now
    assert h.update(4.5, reads(4.0, slot_map("mbox1"), None)).opened == {}


def test_a_slot_held_before_at_another_epoch_waits():
    h = holder(known={0: 1})
    assert h.update(0.5, reads(0.0, slot_map("mbox1", epoch=3), slot_map("mbox1", epoch=3))).opened == {}
    assert h.known == {} and h.pending[0] == (3, 0.5)


# Dropping ---------------------------------------------------------------------------------

def test_a_slot_is_dropped_at_once_when_a_read_names_another_holder_or_epoch():
    h = holder(known={0: 1, 1: 1, 2: 1, 3: 1})
    h.update(0.5, reads(0.0, slot_map("mbox1"), slot_map("mbox1")))
    changed = slot_map("mbox1")
    changed[1] = agent.Slot("mbox2", 2)
    changed[2] = agent.Slot("mbox1", 5)
    del changed[3]
    outcome = h.update(4.5, reads(4.0, slot_map("mbox1"), changed))
    assert outcome.dropped == outcome.lost == {1: 1, 2: 1, 3: 1}
    assert h.open == {0: 1} and h.known == {0: 1}
    # The sessions must be gone by the last confirmation (sent at 4 on ldap1, which still
    # showed it) + L - MARGIN, on both clocks: a taker opens L + EXTRA after the change landed.
    assert h.fence_deadline == (4.0 + L - MARGIN, 4.0 + L - MARGIN)
    assert h.deadline_left(5.0) == 4.0 + L - MARGIN - 5.0


def test_every_slot_goes_with_the_lease_and_comes_back_with_it():
    h = holder(known={0: 1})
    h.update(0.5, reads(0.0, slot_map("mbox1"), slot_map("mbox1")))
    assert h.open == {0: 1}
    for now in (4.0, 8.0, 12.0):
        assert h.update(now + 0.5, reads(now, None, None)).dropped == {}
    outcome = h.check(L - MARGIN)  # 14 s after the last read was sent
    assert outcome.lease_lost and outcome.dropped == {0: 1} and outcome.lost == {}
    assert h.open == {} and h.known == {0: 1}
    assert h.fence_deadline == (0.0 + L - MARGIN, 0.0 + L - MARGIN)
    assert agent.held_text(h.held_expiry(L - MARGIN), h.open) == "expires 0\n"
    back = h.update(20.5, reads(20.0, slot_map("mbox1"), None))
    assert back.lease_regained and back.opened == {0: 1}


@st.composite
def scenarios(draw):
    """A slot moving from mbox1 to mbox2 at epoch 2: when the change lands on each provider,
    and which reads of each holder fail or hang."""
    landing = draw(st.lists(st.floats(0, 40), min_size=2, max_size=2))
    rounds = 30
    answers = st.lists(st.tuples(st.booleans(), st.floats(0, 3)), min_size=rounds, max_size=rounds)
    return landing, draw(answers), draw(answers), draw(answers), draw(answers), draw(st.floats(0, 3.9))


@given(scenarios())
def test_two_holders_never_serve_one_slot_at_once(scenario):
    """The lease argument: the old holder's last served moment (the held file's expiry, or a
    drop) comes before the new holder opens, whatever fails and whenever the change lands."""
    landing, old_p1, old_p2, new_p1, new_p2, offset = scenario
    old, new = agent.Holder("mbox1", (P1, P2), L, MARGIN, EXTRA, known={0: 1}), agent.Holder("mbox2", (P1, P2), L,
                                                                                               MARGIN, EXTRA)

    def read(provider, sent, latency):
        served = sent + latency  # a provider answers with its state when it serves the search
        moved = served >= landing[(P1, P2).index(provider)]
        return agent.Read(sent, {0: agent.Slot("mbox2", 2) if moved else agent.Slot("mbox1", 1)})

    old_serves_until, new_opens_at = -1.0, None
    for index in range(30):
        for h, answers, start in ((old, (old_p1, old_p2), 0.0), (new, (new_p1, new_p2), offset)):
            sent = start + 4.0 * index
            got = {}
            for provider, (ok, latency) in zip((P1, P2), (answers[0][index], answers[1][index])):
                got[provider] = read(provider, sent, latency) if ok else None
            now = sent + max(latency for _, latency in (answers[0][index], answers[1][index]))
            outcome = h.update(now, got)
            if h is old and 0 in old.open:
                old_serves_until = max(old_serves_until, old.last_ok[0] + L - MARGIN)
            if h is new and 0 in outcome.opened and new_opens_at is None:
                new_opens_at = now
    if new_opens_at is not None:
        assert new_opens_at >= max(landing) + L + EXTRA
        assert old_serves_until < new_opens_at


# The held file ----------------------------------------------------------------------------

def test_held_file_format():
    text = agent.held_text(1733526000.75, {7: 2, 0: 1, 255: 1})
    assert text == "expires 1733526000\n0\n7\n255\n"  # floored: Lua's os.time() is whole seconds
    assert agent.parse_held(text) == (1733526000, [0, 7, 255])
    assert agent.held_text(5.0, {}) == "expires 5\n"
    with pytest.raises(ValueError):
        agent.parse_held("0\n1\n")


@given(st.floats(0, 2e9), st.sets(st.integers(0, 255)))
def test_held_file_round_trip(expires, slots):
    back, listed = agent.parse_held(agent.held_text(expires, dict.fromkeys(slots, 1)))
    assert listed == sorted(slots) and back == math.floor(expires)


def test_held_file_is_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "ispmail" / "slots-held"
    agent.write_atomically(str(path), agent.held_text(10.0, {1: 1}), 0o644)
    assert path.read_text() == "expires 10\n1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    inode = path.stat().st_ino
    agent.write_atomically(str(path), agent.held_text(14.0, {}), 0o644)
    assert path.read_text() == "expires 14\n" and path.stat().st_ino != inode  # a new file, renamed

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(agent.os, "replace", broken)
    with pytest.raises(OSError):
        agent.write_atomically(str(path), "half", 0o644)
    assert path.read_text() == "expires 14\n"
    assert os.listdir(path.parent) == ["slots-held"]


def test_known_slots_survive_a_restart(tmp_path):
    path = tmp_path / "slots-held.json"
    assert agent.load_known(str(path)) == {}
    agent.write_atomically(str(path), agent.known_text({3: 2, 1: 1}))
    assert agent.load_known(str(path)) == {1: 1, 3: 2}
    path.write_text("not json")
    assert agent.load_known(str(path)) == {}


@pytest.mark.parametrize("content", [
    b"not json", b"", b"[]", b"null", b'"slots"', b'{"slots": [1, 2]}', b'{"slots": {"a": 1}}',
    b'{"slots": {"1": null}}', b'{"slots": {"1": [2]}}', b'{"slots": {"1": {"epoch": 2}}}', b"\xff\xfe\x00",
    b"[" * 100000], ids=["text", "empty", "list", "null", "string", "slots-list", "bad-number", "null-epoch",
                         "list-epoch", "dict-epoch", "binary", "deep"])
def test_a_corrupt_known_file_is_ignored(tmp_path, content, capsys):
    path = tmp_path / "slots-held.json"
    path.write_bytes(content)
    assert agent.load_known(str(path)) == {}
    assert "ignoring" in capsys.readouterr().err


def test_a_known_file_that_is_a_directory_is_ignored(tmp_path):
    (tmp_path / "slots-held.json").mkdir()
    assert agent.load_known(str(tmp_path / "slots-held.json")) == {}


# Sessions ---------------------------------------------------------------------------------

def test_doveadm_output_is_parsed_in_either_form():
    tab = "username\tservice\tpid\tip\nann@example.test\timap\t812\t10.0.0.1\nann@example.test\tpop3\t9\t\n" \
          "bob@example.test\timap\t813\t10.0.0.2\n"
    assert agent.parse_who(tab) == ["ann@example.test", "bob@example.test"]
    table = "username         service pid  ip\nann@example.test imap    812  10.0.0.1\n\n"
    assert agent.parse_who(table) == ["ann@example.test"]
    assert agent.parse_who("") == []
    proxy = "username\tproto\tsrc ip\tdest ip\tport\nann@example.test\timap\t10.0.0.9\t10.213.0.41\t143\n"
    assert agent.parse_proxy_list(proxy) == [("ann@example.test", "10.213.0.41")]
    assert agent.parse_proxy_list("username proto src ip dest ip port\nann imap 1.2.3.4 10.0.0.41 143\n") == [
        ("ann", "10.0.0.41")]


def test_sessions_to_end_are_those_of_slots_not_held_or_unknown():
    slots = {"a": 1, "b": 2, "pinned": -1, "broken": None}
    assert agent.sessions_to_end(["a", "b", "pinned", "broken"], slots, {1}) == ["b", "broken"]
    assert agent.sessions_to_end(["a", "b", "pinned", "broken"], slots, {1}, unknown=False) == ["b"]


def test_filter_values_are_escaped():
    query = agent.user_slots_query(["a*b@example.test", "x(y)\\z"])
    assert query == "(&(objectClass=ispmailUser)(|(mail=a\\2ab@example.test)(mail=x\\28y\\29\\5cz)))"


class FakeCommands:
    """doveadm and systemctl, recorded: calls in order, and (command, timeout) of the holder's."""

    def __init__(self, sessions=(), proxied=()):
        self.calls, self._sessions, self._proxied = [], sessions, list(proxied)
        self.timeouts = []

    def run(self, argv, quiet=False, timeout=None):
        self.calls.append(("run", *argv))
        return 0, ""

    def flush_auth_cache(self, timeout=None):
        self.calls.append(("flush",))
        self.timeouts.append(("flush", timeout))

    def sessions(self, timeout=None):
        self.timeouts.append(("who", timeout))
        return None if self._sessions is None else list(self._sessions)

    def kick(self, user, timeout=None):
        self.calls.append(("kick", user))
        self.timeouts.append(("kick", timeout))

    def kick_all(self, timeout=None):
        self.calls.append(("kick", "*"))
        self.timeouts.append(("kick *", timeout))

    def kill_dovecot(self, timeout=None):
        self.calls.append(("kill",))
        self._sessions = []  # every session dies with Dovecot

    def proxied(self):
        return self._proxied

    def proxy_kick_host(self, address):
        self.calls.append(("proxy-kick-host", address))

    def proxy_kick_users(self, users):
        self.calls.append(("proxy-kick", *users))


def kicks(commands):
    return [call[1] for call in commands.calls if call[0] == "kick"]


def config(tmp_path, **more):
    return {"mode": "holder", "name": "mbox1", "base_dn": "dc=ispmail,dc=test", "providers": [P1, P2],
            "bind_dn": "cn=mailbox,ou=services,dc=ispmail,dc=test", "bind_password": "x", "lease": L,
            "fence_margin": MARGIN, "held_file": str(tmp_path / "held"), "known_file": str(tmp_path / "known.json"),
            "state_file": str(tmp_path / "state.json"), **more}


class Clocks:
    """The holder's clocks, as the test sets them: boot (CLOCK_BOOTTIME), wall, and
    CLOCK_MONOTONIC (which follows boot unless frozen). advance() moves boot and wall."""

    def __init__(self):
        self.boot, self.wall, self.frozen_monotonic = 100.0, 1000.0, None

    def advance(self, seconds):
        self.boot += seconds
        self.wall += seconds


@pytest.fixture
def clocks(monkeypatch):
    clocks = Clocks()
    monkeypatch.setattr(agent, "boottime", lambda: clocks.boot, raising=False)
    monkeypatch.setattr(agent.time, "monotonic",
                        lambda: clocks.boot if clocks.frozen_monotonic is None else clocks.frozen_monotonic)
    monkeypatch.setattr(agent.time, "time", lambda: clocks.wall)
    monkeypatch.setattr(agent.time, "sleep", lambda seconds: None)
    return clocks


class FakeUserSlots:
    """Users' slots as the local replica would answer (a user not listed: the lookup failed)."""

    def __init__(self, slots):
        self.slots = slots

    def __call__(self, users):
        return {user: self.slots.get(user) for user in users}

    def wanted(self, users):
        return list(users)

    def cached(self, users):
        return self(users)


def holder_daemon(tmp_path, clocks, commands, maps, slots=None, **more):
    """A HolderDaemon whose providers answer maps[provider] (None: an error) at once, sent at the
    clocks' times."""
    daemon = agent.HolderDaemon(config(tmp_path, **more), commands=commands)

    def read(uri):
        answer = agent.Read(clocks.boot, maps[uri], "" if maps[uri] is not None else "down")
        answer.wall = clocks.wall
        return answer

    daemon.read = read
    daemon.user_slots = FakeUserSlots(slots or {})
    return daemon


MINE = {0: "mbox1", 1: "mbox1", 5: "mbox2"}


def test_holder_ends_sessions_of_slots_not_open_every_round(tmp_path, clocks):
    """No drop needed: every round, a session whose user's slot is not open here is kicked (a
    slot of another server, a slot still waiting); a pinned user, and without a kill deadline a
    user whose lookup failed, are left alone."""
    (tmp_path / "known.json").write_text(agent.known_text({0: 1}))
    commands = FakeCommands(sessions=["ann", "bob", "cid", "pat", "eve"])
    daemon = holder_daemon(tmp_path, clocks, commands, {P1: slot_map(MINE), P2: slot_map(MINE)},
                           {"ann": 0, "bob": 5, "cid": 1, "pat": -1})
    daemon.round()
    assert daemon.holder.open == {0: 1}
    assert kicks(commands) == ["bob", "cid"]
    commands.calls.clear()
    clocks.advance(4)
    daemon.round()
    assert kicks(commands) == ["bob", "cid"]  # still listed: kicked again


def test_the_kill_deadline_stays_armed_until_it_has_passed(tmp_path, clocks):
    """A drop arms the deadline (last confirmation + L - MARGIN); an empty listing does not clear
    it, a session that shows up later is kicked, and at the deadline Dovecot is killed. Every
    command's timeout is bounded by the time left."""
    (tmp_path / "known.json").write_text(agent.known_text({0: 1, 1: 1}))
    commands = FakeCommands(sessions=[])
    maps = {P1: slot_map(MINE), P2: slot_map(MINE)}
    daemon = holder_daemon(tmp_path, clocks, commands, maps, {"bob": 1})
    daemon.round()
    assert daemon.holder.open == {0: 1, 1: 1}
    clocks.advance(4)  # 104: ldap2 names another holder for slot 1; ldap1 still confirms it
    maps[P2] = {**slot_map(MINE), 1: agent.Slot("mbox2", 2)}
    daemon.round()
    assert daemon.holder.open == {0: 1}
    assert daemon.holder.fence_deadline is not None  # the listing was empty: still armed
    assert daemon.holder.deadline_left(clocks.boot, clocks.wall) == L - MARGIN
    commands._sessions = ["bob"]  # a session of slot 1 (the auth cache let it in, say)
    for _ in range(3):  # 108, 112, 116
        clocks.advance(4)
        daemon.round()
    assert kicks(commands) == ["bob"] * 3 and ("kill",) not in commands.calls
    assert max(timeout for what, timeout in commands.timeouts if what == "kick") <= 4.0
    assert commands.timeouts[-1] == ("kick", 2.0)  # at 116: 2 s before the deadline (118)
    clocks.advance(4)  # 120: past the deadline, bob is still there
    daemon.round()
    assert commands.calls[-1] == ("kill",) and daemon.holder.fence_deadline is None


def test_the_deadline_is_checked_before_every_kick(tmp_path, clocks):
    (tmp_path / "known.json").write_text(agent.known_text({0: 1}))
    users = [f"u{n}" for n in range(10)]
    commands = FakeCommands(sessions=users)
    daemon = holder_daemon(tmp_path, clocks, commands, {P1: slot_map(MINE), P2: slot_map(MINE)},
                           dict.fromkeys(users, 5))
    kick = commands.kick

    def slow_kick(user, timeout=None):
        kick(user, timeout)
        clocks.advance(0.4)

    commands.kick = slow_kick
    daemon.holder.fence_deadline = (clocks.boot + 1.0, clocks.wall + 1.0)
    daemon.round()
    assert kicks(commands) == ["u0", "u1", "u2"] and commands.calls[-1] == ("kill",)
    assert [timeout for what, timeout in commands.timeouts if what == "kick"] == pytest.approx([1.0, 0.6, 0.2])


def test_a_lost_lease_ends_every_session_with_one_kick_then_kills_at_the_deadline(tmp_path, clocks):
    (tmp_path / "known.json").write_text(agent.known_text({0: 1}))
    commands = FakeCommands(sessions=["ann", "bob", "pat"])
    maps = {P1: slot_map(MINE), P2: slot_map(MINE)}
    daemon = holder_daemon(tmp_path, clocks, commands, maps, {"ann": 0, "bob": 0, "pat": -1})
    daemon.round()  # 100: slot 0 open, confirmed
    maps[P1] = maps[P2] = None
    for _ in range(4):  # 104 .. 116: no provider answers
        clocks.advance(4)
        daemon.round()
    assert kicks(commands) == ["*"]  # one kick of every session, none per user
    assert daemon.holder.open == {} and not daemon.holder.lease_valid(clocks.boot, clocks.wall)
    assert commands.calls[-1] == ("kill",)  # ann and bob still listed at the deadline (114, seen at 116)
    assert daemon.holder.fence_deadline is None


def test_a_lost_lease_without_sessions_left_kills_nothing(tmp_path, clocks):
    (tmp_path / "known.json").write_text(agent.known_text({0: 1}))
    commands = FakeCommands(sessions=["ann", "pat"])
    maps = {P1: slot_map(MINE), P2: slot_map(MINE)}
    daemon = holder_daemon(tmp_path, clocks, commands, maps, {"ann": 0, "pat": -1})
    daemon.round()
    kick_all = commands.kick_all

    def kick_everyone(timeout=None):
        kick_all(timeout)
        commands._sessions = ["pat"]  # ann is gone; pat, pinned here, logged in again

    commands.kick_all = kick_everyone
    maps[P1] = maps[P2] = None
    clocks.advance(L - MARGIN)  # between rounds, as the loop checks
    daemon.act(daemon.holder.check(clocks.boot, wall=clocks.wall))
    assert kicks(commands) == ["*"] and ("kill",) not in commands.calls
    assert daemon.holder.fence_deadline is None


def test_a_round_waits_for_the_reads_at_most_half_the_renew_interval(tmp_path):
    """A hung provider does not hold the round: it goes on with what arrived, and the late answer
    is used by a later round (counted from when it was sent)."""
    release = threading.Event()
    daemon = agent.HolderDaemon(config(tmp_path, renew_interval=1, known_file=str(tmp_path / "known.json")),
                                commands=FakeCommands())
    daemon.user_slots = FakeUserSlots({})

    def read(uri):
        sent = getattr(agent, "boottime", time.monotonic)()
        if uri == P2:
            release.wait(10)
        answer = agent.Read(sent, slot_map("mbox1"))
        answer.wall = time.time()
        return answer

    daemon.read = read
    started = time.monotonic()
    try:
        daemon.round()
        assert time.monotonic() - started < 0.9
        assert daemon.holder.last_read[P1] is not None and daemon.holder.last_read[P2] is None
    finally:
        release.set()
    daemon.futures[P2].result(5)
    daemon.round()
    assert daemon.holder.last_read[P2] is not None


def ready_before_first_round(daemon, told):
    """READY=1 reaches systemd before the first round starts (which may hang on LDAP)."""
    class Stop(Exception):
        pass

    def first_round():
        told.append("first round")
        raise Stop

    daemon.round = first_round
    with pytest.raises(Stop):
        daemon.run()
    return told == ["READY=1", "first round"]


def test_the_holder_is_ready_before_its_first_round(tmp_path, monkeypatch):
    told = []
    monkeypatch.setattr(agent, "sd_notify", told.append)
    assert ready_before_first_round(agent.HolderDaemon(config(tmp_path), commands=FakeCommands()), told)


def test_the_lease_needs_both_clocks():
    """A paused VM: CLOCK_BOOTTIME (or CLOCK_MONOTONIC) barely moved, the wall clock did; the
    lease is gone all the same, and the held file's expiry comes from the read's wall time."""
    h = holder(known={0: 1})
    h.update(10.5, {P1: agent.Read(10.0, slot_map("mbox1"), wall=1000.0), P2: None}, wall=1000.5)
    assert h.open == {0: 1} and h.expires() == math.floor(1000.0 + L - MARGIN)
    assert h.lease_valid(11.0, wall=1000.0 + L - MARGIN - 0.1)
    assert not h.lease_valid(11.0, wall=1000.0 + L - MARGIN)
    assert not h.lease_valid(10.0 + L - MARGIN, wall=1001.0)  # and the other way round
    outcome = h.check(11.0, wall=1100.0)
    assert outcome.lease_lost and outcome.dropped == {0: 1}
    assert h.held_expiry(11.0, wall=1100.0) == 0
    assert h.fence_deadline == (10.0 + L - MARGIN, 1000.0 + L - MARGIN)
    assert h.deadline_left(11.0, wall=1100.0) == pytest.approx(1000.0 + L - MARGIN - 1100.0)


def test_the_held_file_expiry_is_never_extended_without_a_new_read(tmp_path, clocks):
    """The expiry is the last successful read's wall time + L - MARGIN, floored; writing the file
    again later (the boot clock stood still, or the reads fail) extends nothing."""
    (tmp_path / "known.json").write_text(agent.known_text({0: 1}))
    maps = {P1: slot_map(MINE), P2: None}
    daemon = holder_daemon(tmp_path, clocks, FakeCommands(), maps)
    clocks.wall = 1000.6
    daemon.round()
    assert agent.parse_held((tmp_path / "held").read_text()) == (math.floor(1000.6 + L - MARGIN), [0])
    clocks.wall += 10  # the wall clock moves, the boot clock does not (a paused VM)
    daemon.write_files()
    assert agent.parse_held((tmp_path / "held").read_text()) == (math.floor(1000.6 + L - MARGIN), [0])
    maps[P1] = None
    clocks.advance(3)  # 13.0 s after the read on the wall clock: still valid, still not extended
    daemon.round()
    assert agent.parse_held((tmp_path / "held").read_text()) == (math.floor(1000.6 + L - MARGIN), [0])


def test_boottime_is_clock_boottime():
    assert abs(agent.boottime() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 0.5


def test_holder_durations_are_on_clock_boottime(tmp_path, clocks):
    (tmp_path / "known.json").write_text(agent.known_text({0: 1}))
    maps = {P1: slot_map(MINE), P2: slot_map(MINE)}
    daemon = holder_daemon(tmp_path, clocks, FakeCommands(), maps)
    daemon.round()
    assert daemon.holder.open == {0: 1}
    maps[P1] = maps[P2] = None
    clocks.frozen_monotonic = clocks.boot  # suspended: CLOCK_MONOTONIC stood still, CLOCK_BOOTTIME did not
    clocks.boot += L
    daemon.round()
    assert daemon.holder.open == {}


def test_holder_writes_the_held_file_and_its_state(tmp_path, clocks):
    daemon = agent.HolderDaemon(config(tmp_path), commands=FakeCommands())
    clocks.boot, clocks.wall = 50.0, 1000.0
    daemon.holder.update(50.0, {P1: agent.Read(48.0, slot_map("mbox1"), wall=998.0), P2: None}, wall=1000.0)
    daemon.holder.open = {0: 1, 1: 1}
    daemon.holder.known = {0: 1, 1: 1}
    daemon.write_files()
    assert agent.parse_held((tmp_path / "held").read_text()) == (998 + L - MARGIN, [0, 1])
    assert agent.load_known(str(tmp_path / "known.json")) == {0: 1, 1: 1}
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["mode"] == "holder" and state["open_slots"] == "0-1" and state["lease"]["valid"]
    assert state["lease"] == {"valid": True, "age": 2.0, "expires": 998 + L - MARGIN}
    assert state["providers"]["ldap1.ispmail.test"]["ok"] is True
    assert state["providers"]["ldap2.ispmail.test"] is None


def test_status_prints_the_state(tmp_path, capsys):
    path = tmp_path / "takeover.json"
    path.write_text(json.dumps(config(tmp_path)))
    assert agent.main(["--config", str(path), "status"]) == 1
    (tmp_path / "state.json").write_text(json.dumps({"mode": "holder", "written": 0}))
    assert agent.main(["--config", str(path), "status"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "holder"


def test_sd_notify_speaks_to_the_socket(tmp_path, monkeypatch):
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert agent.sd_notify("WATCHDOG=1")
        assert listener.recv(100) == b"WATCHDOG=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not agent.sd_notify("READY=1")


# Observers --------------------------------------------------------------------------------

def test_health_needs_failures_in_a_row_to_go_down_and_successes_to_come_back():
    h = agent.Health(failures=5, successes=2)
    assert [h.record(False, t) for t in range(4)] == [None] * 4
    assert h.record(True, 4) is None and h.failures == 0  # the streak is broken
    assert [h.record(False, t) for t in range(5, 10)] == [None] * 4 + ["down"]
    assert h.down and h.since == 9
    assert h.record(False, 10) is None
    assert h.record(True, 11) is None and h.record(False, 12) is None
    assert h.record(True, 13) is None and h.record(True, 14) == "up" and not h.down


@pytest.mark.parametrize("gateways,needed", [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
def test_majority(gateways, needed):
    assert agent.majority(gateways) == needed


def test_quorum_counts_each_known_gateway_once():
    gateways = ["gw1", "gw2", "gw3"]
    assert not agent.has_quorum(["gw1"], gateways)
    assert agent.has_quorum(["gw1", "GW2"], gateways)
    assert not agent.has_quorum(["gw1", "gw1", "gw9"], gateways)
    assert agent.has_quorum(["gw1", "gw2", "gw3"], gateways)


def test_rendezvous_takes_the_highest_hash():
    import hashlib
    servers = ["mbox1", "mbox2", "mbox3"]
    for slot in range(20):
        best = max(servers, key=lambda s: hashlib.sha256(f"{slot}:{s}".encode()).digest())
        assert agent.rendezvous(slot, servers) == best == agent.rendezvous(slot, list(reversed(servers)))
    assert agent.rendezvous(1, []) is None


@given(st.sets(st.sampled_from([f"mbox{i}" for i in range(1, 7)]), min_size=2), st.integers(0, 255))
def test_rendezvous_moves_only_what_the_lost_server_had(servers, slot):
    servers = sorted(servers)
    winner = agent.rendezvous(slot, servers)
    for gone in servers:
        if gone != winner:
            assert agent.rendezvous(slot, [s for s in servers if s != gone]) == winner


def test_rendezvous_spreads_a_servers_slots():
    counts = {}
    for slot in range(256):
        new = agent.rendezvous(slot, ["mbox2", "mbox3", "mbox4"])
        counts[new] = counts.get(new, 0) + 1
    assert min(counts.values()) > 50


def test_take_over_plan_moves_only_the_down_servers_slots():
    slots = {0: agent.Slot("mbox1", 1), 1: agent.Slot("MBOX1", 4), 2: agent.Slot("mbox2", 1)}
    plan = agent.plan_takeover(slots, "mbox1", ["mbox1", "mbox2", "mbox3"])
    assert [(n, old, epoch) for n, old, _, epoch in plan] == [(0, "mbox1", 1), (1, "MBOX1", 4)]
    assert all(new in ("mbox2", "mbox3") and new == agent.rendezvous(n, ["mbox2", "mbox3"]) for n, _, new, _ in plan)
    assert agent.plan_takeover(slots, "mbox1", ["mbox1"]) == []


def test_moved_slots():
    before = {0: agent.Slot("mbox1", 1), 1: agent.Slot("mbox1", 1), 2: agent.Slot("mbox2", 1)}
    after = {0: agent.Slot("mbox2", 2), 1: agent.Slot("MBOX1", 1), 2: agent.Slot("mbox2", 1), 3: agent.Slot("x", 1)}
    assert agent.moved_slots(before, after) == {0: ("mbox1", "mbox2")}


# Compare-and-swap against a fake arbiter --------------------------------------------------

class FakeArbiter:
    """An ldap3-style connection to one directory: modify applies its changes in order and
    all or nothing, as slapd does (deleting a value that is not there: noSuchAttribute)."""

    def __init__(self, entries):
        self.entries = {dn.lower(): {k.lower(): list(v) for k, v in attrs.items()} for dn, attrs in entries.items()}
        self.result = {}
        self.modifies = []
        self.result_code = 0  # what every search answers, when not 0

    def _done(self, code, description="success"):
        self.result = {"result": code, "description": description}
        return code == 0

    def modify(self, dn, changes):
        self.modifies.append((dn, changes))
        entry = self.entries.get(dn.lower())
        if entry is None:
            return self._done(32, "noSuchObject")
        new = {k: list(v) for k, v in entry.items()}
        for name, operations in changes.items():
            values = new.setdefault(name.lower(), [])
            for operation, given in operations if isinstance(operations, list) else [operations]:
                for value in given:
                    present = [v for v in values if v.lower() == value.lower()]
                    if operation == agent.MODIFY_DELETE:
                        if not present:
                            return self._done(16, "noSuchAttribute")
                        values.remove(present[0])
                    elif present:
                        return self._done(20, "attributeOrValueExists")
                    else:
                        values.append(value)
            if name.lower() in ("ispmailmailboxhost", "ispmailslotepoch") and len(values) > 1:
                return self._done(19, "constraintViolation")
        self.entries[dn.lower()] = {k: v for k, v in new.items() if v}
        return self._done(0)

    def add(self, dn, object_class, attributes):
        self.entries[dn.lower()] = {"objectclass": [object_class] if isinstance(object_class, str) else object_class,
                                    **{k.lower(): [v] for k, v in attributes.items()}}
        return self._done(0)

    def search(self, base, filter_text, search_scope="SUBTREE", attributes=None):
        base = base.lower()
        if search_scope == "BASE":
            found = [(base, self.entries[base])] if base in self.entries else []
        else:
            found = [(dn, attrs) for dn, attrs in self.entries.items() if dn.endswith("," + base)]
        if "ispmailmailboxslot" in filter_text.lower():
            found = [(dn, attrs) for dn, attrs in found if "ispmailslotepoch" in attrs]
        elif "ispmailmailboxserver" in filter_text.lower():
            found = [(dn, attrs) for dn, attrs in found if "ispmailslotepoch" not in attrs]
        if self.result_code:
            self.response = []
            return self._done(self.result_code, "sizeLimitExceeded")
        wanted = {name.lower() for name in attributes or []}
        self.response = [{"type": "searchResEntry", "dn": dn,
                          "raw_attributes": {k: [v.encode() for v in vs] for k, vs in attrs.items()
                                             if not wanted or k in wanted}}
                         for dn, attrs in found]
        return self._done(0)


BASE = "dc=ispmail,dc=test"


def arbiter(holders, homes=None, epoch=1):
    entries = {f"cn={n},ou=slots,{BASE}": {"cn": [str(n)], "ispmailMailboxHost": [h], "ispmailSlotEpoch": [str(epoch)],
                                           "ispmailSlotHome": [(homes or {}).get(n, h)]}
               for n, h in holders.items()}
    entries[f"cn=mbox1,ou=slots,{BASE}"] = {"cn": ["mbox1"]}
    return FakeArbiter(entries)


def test_two_takers_race_and_one_wins():
    conn = arbiter({7: "mbox1"})
    assert agent.compare_and_swap(conn, BASE, 7, "mbox1", "mbox2", 1) is True
    assert agent.compare_and_swap(conn, BASE, 7, "mbox1", "mbox3", 1) is False
    assert agent.read_slots(conn, BASE) == {7: agent.Slot("mbox2", 2)}


def test_a_stale_epoch_loses_even_with_the_right_holder():
    conn = arbiter({7: "mbox1"}, epoch=3)
    assert agent.compare_and_swap(conn, BASE, 7, "mbox1", "mbox2", 2) is False
    assert agent.read_slots(conn, BASE) == {7: agent.Slot("mbox1", 3)}  # all or nothing


def test_other_errors_are_not_conflicts():
    with pytest.raises(agent.LdapError, match="noSuchObject"):
        agent.compare_and_swap(arbiter({}), BASE, 9, "mbox1", "mbox2", 1)


def big_map(count):
    return arbiter({n: "mbox1" for n in range(count)})


def test_a_map_larger_than_the_size_limit_is_refused():
    assert len(agent.read_slots(big_map(agent.MAX_SLOTS), BASE)) == agent.MAX_SLOTS == 500
    with pytest.raises(agent.MapTooLarge, match="501 entries"):
        agent.read_slots(big_map(agent.MAX_SLOTS + 1), BASE)
    cut = big_map(10)
    cut.result_code = 4  # slapd's sizeLimitExceeded: the answer was cut at the limit
    with pytest.raises(agent.MapTooLarge, match="size limit"):
        agent.read_slots(cut, BASE)


def test_the_holder_refuses_a_map_larger_than_the_size_limit(tmp_path, monkeypatch, capsys):
    """It exits with 2 (which the unit does not restart), with the reason in the journal."""
    fake = big_map(agent.MAX_SLOTS + 1)
    monkeypatch.setattr(agent.Ldap, "run", lambda self, operation: operation(fake))
    monkeypatch.setattr(agent, "sd_notify", lambda state: None)

    class Stop(Exception):
        pass

    def sleep(seconds):
        raise Stop  # a round went by without refusing

    monkeypatch.setattr(agent.time, "sleep", sleep)
    path = tmp_path / "takeover.json"
    path.write_text(json.dumps(config(tmp_path)))
    assert agent.main(["--config", str(path), "holder"]) == 2
    err = capsys.readouterr().err
    assert "REFUSED" in err and "at most 500 slots" in err
    assert not (tmp_path / "held").exists()  # no round went on with a cut map


class Direct:
    """An Ldap whose operations run on a fake connection."""

    uri = "ldap://localhost/"

    def __init__(self, conn):
        self.conn = conn

    def run(self, operation):
        return operation(self.conn)


def test_votes_carry_their_time_and_only_fresh_ones_count():
    values = ["gw1 1000", "GW3 1000", "gw2 969", "gw4", "gw5 soon", "gw6 2000", "", "gw7 971"]
    assert agent.fresh_votes(values, 1000.0) == ["gw1", "gw3", "gw7"]
    assert agent.fresh_votes(values, 1000.0, ttl=60) == ["gw1", "gw2", "gw3", "gw7"]
    assert agent.parse_vote("gw1 1000") == ("gw1", 1000) and agent.parse_vote("gw4") == ("gw4", None)
    assert agent.vote_value("gw1", 1000.9) == "gw1 1000"


def test_a_vote_is_refreshed_by_one_modify_and_withdrawn_by_its_name():
    conn = arbiter({})
    mbox1 = f"cn=mbox1,ou=slots,{BASE}"
    assert agent.set_vote(conn, BASE, "mbox1", "gw1", True, 1000)
    assert agent.set_vote(conn, BASE, "mbox1", "gw2", True, 1003)
    assert agent.read_votes(conn, BASE, "mbox1") == ["gw1 1000", "gw2 1003"]
    before = len(conn.modifies)
    assert agent.set_vote(conn, BASE, "mbox1", "gw1", True, 1010.5)
    assert conn.modifies[before:] == [(mbox1, {"ispmailDownVote": [(agent.MODIFY_DELETE, ["gw1 1000"]),
                                                                   (agent.MODIFY_ADD, ["gw1 1010"])]})]
    assert agent.read_votes(conn, BASE, "mbox1") == ["gw1 1010", "gw2 1003"]
    assert agent.set_vote(conn, BASE, "mbox1", "gw1", True, 1010) and len(conn.modifies) == before + 1  # no change
    # Withdrawing removes every value of this gateway: one from before votes had a time too.
    conn.modify(mbox1, {"ispmailDownVote": [(agent.MODIFY_ADD, ["gw1", "GW1 5"])]})
    assert agent.set_vote(conn, BASE, "mbox1", "gw1", False)
    assert agent.read_votes(conn, BASE, "mbox1") == ["gw2 1003"]
    assert agent.set_vote(conn, BASE, "mbox1", "gw1", False)  # none left
    assert agent.set_vote(conn, BASE, "mbox9", "gw1", False)  # no entry, no vote
    assert agent.set_vote(conn, BASE, "mbox9", "gw1", True, 1000)  # the entry is made
    assert agent.read_votes(conn, BASE, "mbox9") == ["gw1 1000"]
    assert agent.read_all_votes(conn, BASE) == {"mbox1": ["gw2 1003"], "mbox9": ["gw1 1000"]}


def observer_state(**servers):
    return {"mode": "observer", "servers": {name: {"state": state} for name, state in servers.items()}}


def test_failback_moves_the_home_slots_back():
    conn = arbiter({0: "mbox2", 1: "mbox3", 2: "mbox1", 3: "mbox2"}, homes={0: "mbox1", 1: "mbox1", 2: "mbox1"})
    code, message = agent.failback({"base_dn": BASE}, "mbox1", conn, observer_state(mbox1="up"))
    assert code == 0 and message == "moved 2 slots back to mbox1: 0-1"
    assert agent.read_slots(conn, BASE) == {0: agent.Slot("mbox1", 2), 1: agent.Slot("mbox1", 2),
                                            2: agent.Slot("mbox1", 1), 3: agent.Slot("mbox2", 1)}
    assert agent.failback({"base_dn": BASE}, "mbox1", conn, observer_state(mbox1="up"))[1] == \
        "moved 0 slots back to mbox1"


def test_failback_refuses_a_server_the_observer_does_not_see_up():
    conn = arbiter({0: "mbox2"}, homes={0: "mbox1"})
    assert agent.failback({"base_dn": BASE}, "mbox1", conn, observer_state(mbox1="down"))[0] == 2
    assert agent.failback({"base_dn": BASE}, "mbox7", conn, observer_state(mbox1="up"))[0] == 2
    assert agent.read_slots(conn, BASE) == {0: agent.Slot("mbox2", 1)}


def test_failback_without_a_running_observer_is_refused(tmp_path):
    path = tmp_path / "takeover.json"
    path.write_text(json.dumps({**config(tmp_path), "mode": "observer"}))
    assert agent.main(["--config", str(path), "failback", "mbox1"]) == 2


def observer(tmp_path, commands):
    cfg = {**config(tmp_path), "mode": "observer", "name": "gw1", "gateways": ["gw1", "gw2", "gw3"],
           "servers": {"mbox1": "10.0.0.41", "mbox2": "10.0.0.42"},
           "flush_commands": ["/usr/sbin/postqueue -c /etc/postfix-mbox -f"], "flush_after": [3, 15]}
    return agent.ObserverDaemon(cfg, commands=commands, probe=lambda *args: (True, ""))


def test_observer_follows_a_take_over(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.time, "monotonic", lambda: 100.0)
    commands = FakeCommands()
    daemon = observer(tmp_path, commands)
    for _ in range(5):
        daemon.health["mbox1"].record(False, 90.0)
    daemon.follow({0: ("mbox1", "mbox2"), 1: ("mbox1", "mbox2")})
    assert commands.calls == [("flush",), ("proxy-kick-host", "10.0.0.41")]
    assert [(when, " ".join(argv)) for when, argv in daemon.flushes] == [
        (100.0 + L + 3, "/usr/sbin/postqueue -c /etc/postfix-mbox -f"),
        (100.0 + L + 15, "/usr/sbin/postqueue -c /etc/postfix-mbox -f")]
    daemon.follow({2: ("mbox1", "mbox2")})  # the same flushes again: not twice
    assert len(daemon.flushes) == 2


def test_observer_follows_a_failback_user_by_user(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.time, "monotonic", lambda: 100.0)
    commands = FakeCommands(proxied=[("ann", "10.0.0.42"), ("bob", "10.0.0.42"), ("cid", "10.0.0.41")])
    daemon = observer(tmp_path, commands)
    daemon.user_slots = lambda users: {"ann": 5, "bob": 6}
    daemon.follow({5: ("mbox2", "mbox1")})
    assert commands.calls == [("flush",), ("proxy-kick", "ann")]


def test_observer_runs_due_flushes_once(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(agent.time, "monotonic", lambda: clock[0])
    commands = FakeCommands()
    daemon = observer(tmp_path, commands)
    daemon.flushes = [(110.0, ["postqueue", "-f"]), (120.0, ["postqueue", "-f"])]
    clock[0] = 111.0
    daemon.run_flushes()
    daemon.run_flushes()
    assert commands.calls == [("run", "postqueue", "-f")] and len(daemon.flushes) == 1


def test_observer_takes_over_with_a_majority_of_fresh_votes(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.time, "monotonic", lambda: 100.0)
    monkeypatch.setattr(agent.time, "time", lambda: 5000.0)
    daemon = observer(tmp_path, FakeCommands())
    fake = arbiter({0: "mbox1", 1: "mbox1", 2: "mbox2"})
    daemon.arbiter = Direct(fake)
    for _ in range(5):
        daemon.health["mbox1"].record(False, 90.0)
    daemon.vote["mbox1"] = {"down": True, "synced": False, "written": None}
    # gw3's vote from before votes had a time, and gw2's of 40 s ago (a gateway that died since):
    # neither counts, so gw1 alone is no majority.
    fake.modify(f"cn=mbox1,ou=slots,{BASE}", {"ispmailDownVote": [(agent.MODIFY_ADD, ["gw3", "gw2 4960"])]})
    daemon.sync_votes()
    daemon.read_votes()
    daemon.take_over()
    assert agent.read_slots(fake, BASE)[0].holder == "mbox1"
    assert daemon.votes_seen["mbox1"] == ["gw1"] and daemon.votes_stale["mbox1"] == ["gw2 4960", "gw3"]
    fake.modify(f"cn=mbox1,ou=slots,{BASE}", {"ispmailDownVote": [(agent.MODIFY_ADD, ["gw2 4995"])]})
    daemon.read_votes()
    daemon.take_over()
    assert agent.read_slots(fake, BASE) == {0: agent.Slot("mbox2", 2), 1: agent.Slot("mbox2", 2),
                                            2: agent.Slot("mbox2", 1)}
    assert daemon.last_takeover["moved"] == {"mbox2": "0-1"} and daemon.last_takeover["down_for"] == 10.0


def test_no_take_over_without_this_rounds_votes(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.time, "time", lambda: 5000.0)
    daemon = observer(tmp_path, FakeCommands())
    fake = arbiter({0: "mbox1"})
    daemon.arbiter = Direct(fake)
    for _ in range(5):
        daemon.health["mbox1"].record(False, 90.0)
    fake.modify(f"cn=mbox1,ou=slots,{BASE}", {"ispmailDownVote": [(agent.MODIFY_ADD, ["gw1 5000", "gw2 5000"])]})
    daemon.read_votes()
    fake.result_code = 51  # busy: this round's read fails
    daemon.read_votes()
    fake.result_code = 0
    daemon.take_over()
    assert agent.read_slots(fake, BASE)[0].holder == "mbox1"
    assert any("votes could not be read" in problem for problem in daemon.problems.values())


def test_the_observer_refreshes_its_vote_while_the_server_is_down(tmp_path, monkeypatch):
    clock = {"mono": 100.0, "wall": 5000.0}
    told = []
    monkeypatch.setattr(agent.time, "monotonic", lambda: clock["mono"])
    monkeypatch.setattr(agent.time, "time", lambda: clock["wall"])
    monkeypatch.setattr(agent, "sd_notify", told.append)
    daemon = observer(tmp_path, FakeCommands())
    fake = arbiter({})
    daemon.arbiter = Direct(fake)
    fake.modify(f"cn=mbox1,ou=slots,{BASE}", {"ispmailDownVote": [(agent.MODIFY_ADD, ["gw1 4000", "gw2 4990"])]})
    daemon.sync_votes()  # at start: this gateway's old votes go
    assert agent.read_votes(fake, BASE, "mbox1") == ["gw2 4990"]
    assert told.count("WATCHDOG=1") == 2  # one per vote written (mbox1, mbox2)

    def after(seconds):
        clock["mono"] += seconds
        clock["wall"] += seconds
        told.clear()
        daemon.sync_votes()
        return agent.read_votes(fake, BASE, "mbox1")

    daemon.vote["mbox1"] = {"down": True, "synced": False, "written": None}
    assert after(0) == ["gw1 5000", "gw2 4990"] and told == ["WATCHDOG=1"]
    assert after(5) == ["gw1 5000", "gw2 4990"] and told == []
    assert after(5) == ["gw1 5010", "gw2 4990"] and told == ["WATCHDOG=1"]
    assert after(10) == ["gw1 5020", "gw2 4990"]
    daemon.vote["mbox1"] = {"down": False, "synced": False, "written": None}  # up again
    assert after(1) == ["gw2 4990"]


def test_the_observer_is_ready_before_its_first_round(tmp_path, monkeypatch):
    told = []
    monkeypatch.setattr(agent, "sd_notify", told.append)
    assert ready_before_first_round(observer(tmp_path, FakeCommands()), told)


# The LMTP probe against a local server ----------------------------------------------------

def lmtp_server(replies):
    """A one-connection server on 127.0.0.1 that sends replies[0] at once, then one reply per
    line received; returns (port, lines received)."""
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received = []

    def serve():
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as stream:
            if replies[0]:
                conn.sendall(replies[0])
            for reply in replies[1:]:
                line = stream.readline()
                if not line:
                    break
                received.append(line.decode().strip())
                if reply:
                    conn.sendall(reply)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], received


def test_probe_speaks_lmtp():
    port, received = lmtp_server([b"220 mbox1 Dovecot ready.\r\n",
                                  b"250-mbox1\r\n250-8BITMIME\r\n250 PIPELINING\r\n", b"221 2.0.0 OK\r\n"])
    assert agent.lmtp_probe("127.0.0.1", port, "gw1", 1) == (True, "")
    assert received == ["LHLO gw1", "QUIT"]


def test_probe_fails_on_a_refusal_a_bad_greeting_and_silence():
    port, _ = lmtp_server([b"421 4.3.2 shutting down\r\n"])
    assert agent.lmtp_probe("127.0.0.1", port, "gw1", 1) == (False, "greeting 421")
    port, _ = lmtp_server([b"220 ready\r\n", b"451 4.3.0 no\r\n"])
    assert agent.lmtp_probe("127.0.0.1", port, "gw1", 1) == (False, "LHLO answered 451")
    port, _ = lmtp_server([b"", b""])  # accepts, says nothing: a paused server
    ok, error = agent.lmtp_probe("127.0.0.1", port, "gw1", 0.5)
    assert not ok and "timed out" in error
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        free = closed.getsockname()[1]
    ok, error = agent.lmtp_probe("127.0.0.1", free, "gw1", 1)
    assert not ok and "ConnectionRefused" in error


def test_sd_notify_never_waits_for_a_full_socket(tmp_path, monkeypatch):
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)  # and never read: its queue fills up
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        sent = [agent.sd_notify("WATCHDOG=1") for _ in range(2000)]
        assert sent[0] and not sent[-1]


# Metrics (node-exporter's textfile collector) -----------------------------------------------

def parsed_metrics(text):
    """{(name, ((label, value), ...)): value} of a text-format exposition, which must parse, with
    HELP and TYPE gauge for every family and nothing per slot."""
    from prometheus_client.parser import text_string_to_metric_families
    samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge" and family.documentation, family.name
        assert family.name.startswith("ispmail_takeover_")
        for sample in family.samples:
            assert "slot" not in sample.labels
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def holder_metrics_state():
    return {"mode": "holder", "name": "mbox1", "written": 1000.5, "pid": 1,
            "lease": {"valid": True, "age": 1.25, "expires": 1013.0},
            "open": {"0": 1, "1": 1, "2": 3}, "open_slots": "0-2",
            "pending": {"7": {"epoch": 2, "opens_in": 12.0}}, "known": {"0": 1},
            "providers": {"ldap1.ispmail.test": {"ok": True, "age": 1.25, "error": ""},
                          "ldap2.ispmail.test": {"ok": False, "age": 9.0, "error": "timeout"},
                          "ldap3.ispmail.test": None},
            "fence_deadline_in": None}


def observer_metrics_state():
    return {"mode": "observer", "name": "gw1", "written": 2000.0, "pid": 2, "gateways": ["gw1", "gw2", "gw3"],
            "majority": 2,
            "servers": {"mbox1": {"state": "down", "failures": 9, "successes": 0, "error": "refused", "since": 12.0,
                                  "votes": ["gw1", "gw2"], "my_vote": {"down": True, "synced": True}},
                        "mbox2": {"state": "up", "failures": 0, "successes": 40, "error": "", "since": None,
                                  "votes": [], "my_vote": {"down": False, "synced": True}}},
            "last_takeover": {"server": "mbox1", "when": 1990.25, "down_for": 10.0, "moved": {"mbox2": "0-1"},
                              "conflicts": "none"},
            "map": {"slots": 4, "age": 0.5, "error": "", "held": {"mbox1": 0, "mbox2": 4},
                    "away": {"mbox1": 2, "mbox2": 0}},
            "pending_flushes": [], "problems": []}


def test_holder_metrics():
    assert parsed_metrics(agent.metrics_text(holder_metrics_state())) == {
        ("ispmail_takeover_lease_valid", ()): 1.0,
        ("ispmail_takeover_lease_age_seconds", ()): 1.25,
        ("ispmail_takeover_slots_open", ()): 3.0,
        ("ispmail_takeover_slots_waiting", ()): 1.0,
        ("ispmail_takeover_provider_up", (("provider", "ldap1.ispmail.test"),)): 1.0,
        ("ispmail_takeover_provider_up", (("provider", "ldap2.ispmail.test"),)): 0.0,
        ("ispmail_takeover_provider_up", (("provider", "ldap3.ispmail.test"),)): 0.0,
        ("ispmail_takeover_agent_timestamp_seconds", ()): 1000.5,
    }


def test_holder_metrics_without_a_lease_yet():
    state = {**holder_metrics_state(), "lease": {"valid": False, "age": None, "expires": None}, "open": {}, "pending": {}}
    text = agent.metrics_text(state)
    assert "ispmail_takeover_lease_age_seconds +Inf\n" in text
    samples = parsed_metrics(text)
    assert samples[("ispmail_takeover_lease_valid", ())] == 0.0
    assert samples[("ispmail_takeover_slots_open", ())] == 0.0


def test_observer_metrics():
    assert parsed_metrics(agent.metrics_text(observer_metrics_state())) == {
        ("ispmail_takeover_server_up", (("server", "mbox1"),)): 0.0,
        ("ispmail_takeover_server_up", (("server", "mbox2"),)): 1.0,
        ("ispmail_takeover_down_votes", (("server", "mbox1"),)): 2.0,
        ("ispmail_takeover_down_votes", (("server", "mbox2"),)): 0.0,
        ("ispmail_takeover_slots_held", (("server", "mbox1"),)): 0.0,
        ("ispmail_takeover_slots_held", (("server", "mbox2"),)): 4.0,
        ("ispmail_takeover_slots_away", (("server", "mbox1"),)): 2.0,
        ("ispmail_takeover_slots_away", (("server", "mbox2"),)): 0.0,
        ("ispmail_takeover_last_takeover_timestamp_seconds", ()): 1990.25,
        ("ispmail_takeover_map_age_seconds", ()): 0.5,
        ("ispmail_takeover_agent_timestamp_seconds", ()): 2000.0,
    }


def test_observer_metrics_before_the_first_map_and_take_over():
    state = {**observer_metrics_state(), "last_takeover": None, "map": {"slots": 0, "age": None, "error": "down"}}
    text = agent.metrics_text(state)
    assert "ispmail_takeover_map_age_seconds +Inf\n" in text
    assert "ispmail_takeover_slots_held" not in text and "ispmail_takeover_slots_away" not in text
    assert parsed_metrics(text)[("ispmail_takeover_last_takeover_timestamp_seconds", ())] == 0.0


def test_metrics_escape_label_values():
    state = {**holder_metrics_state(), "providers": {'a"b\\c\nd': {"ok": True}}}
    text = agent.metrics_text(state)
    assert 'provider="a\\"b\\\\c\\nd"' in text
    assert parsed_metrics(text)[("ispmail_takeover_provider_up", (("provider", 'a"b\\c\nd'),))] == 1.0


def test_map_counts_held_and_away_by_home():
    slots = {0: agent.Slot("mbox2", 2, "mbox1"), 1: agent.Slot("MBOX2", 2, "mbox1"), 2: agent.Slot("mbox2", 1, "mbox2"),
             3: agent.Slot("mbox1", 1, "MBOX1"), 4: agent.Slot("mbox3", 1, "")}
    assert agent.map_counts(slots, ["mbox1", "mbox2"]) == ({"mbox1": 1, "mbox2": 3, "mbox3": 1},
                                                           {"mbox1": 2, "mbox2": 0})
    assert agent.map_counts({}, ["mbox1"]) == ({"mbox1": 0}, {"mbox1": 0})


def test_holder_writes_its_metrics_atomically(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.time, "monotonic", lambda: 50.0)
    monkeypatch.setattr(agent.time, "time", lambda: 1000.0)
    metrics = tmp_path / "textfile" / "ispmail_takeover.prom"
    daemon = agent.HolderDaemon(config(tmp_path, metrics_file=str(metrics)), commands=FakeCommands())
    daemon.holder.update(50.0, reads(48.0, slot_map("mbox1"), None))
    daemon.holder.open = {0: 1, 1: 1}
    daemon.write_files()
    state = json.loads((tmp_path / "state.json").read_text())
    assert metrics.read_text() == agent.metrics_text(state)
    assert stat.S_IMODE(os.stat(metrics).st_mode) == 0o644
    assert os.listdir(metrics.parent) == ["ispmail_takeover.prom"]  # no temporary file left
    samples = parsed_metrics(metrics.read_text())
    assert samples[("ispmail_takeover_slots_open", ())] == 2.0
    assert samples[("ispmail_takeover_agent_timestamp_seconds", ())] == 1000.0


def test_no_metrics_file_without_the_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.time, "monotonic", lambda: 50.0)
    daemon = agent.HolderDaemon(config(tmp_path), commands=FakeCommands())
    daemon.write_files()
    assert sorted(os.listdir(tmp_path)) == ["held", "state.json"]


def test_a_failing_metrics_file_is_logged_once(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    metrics = agent.MetricsFile(str(tmp_path / "file" / "ispmail_takeover.prom"))  # its directory is a file
    metrics.write(holder_metrics_state())
    metrics.write(holder_metrics_state())
    assert capsys.readouterr().err.count("cannot write the metrics") == 1


def test_observer_writes_its_map_counts_and_fresh_votes_of_every_server(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.time, "monotonic", lambda: 100.0)
    monkeypatch.setattr(agent.time, "time", lambda: 5000.0)
    metrics = tmp_path / "ispmail_takeover.prom"
    daemon = observer(tmp_path, FakeCommands())
    daemon.config["metrics_file"] = str(metrics)
    daemon.metrics = agent.MetricsFile(str(metrics))
    fake = arbiter({0: "mbox2", 1: "mbox2", 2: "mbox2"}, homes={0: "mbox1", 1: "mbox1"})
    daemon.replica = daemon.arbiter = Direct(fake)
    # mbox1 is up from here: its votes are read and counted all the same (a gateway that sees
    # it down; a stale vote is in the state, not in the count).
    fake.modify(f"cn=mbox1,ou=slots,{BASE}", {"ispmailDownVote": [(agent.MODIFY_ADD, ["gw2 4999", "gw3 4900"])]})
    daemon.watch_map()
    daemon.read_votes()
    daemon.write_state()
    samples = parsed_metrics(metrics.read_text())
    assert samples[("ispmail_takeover_slots_held", (("server", "mbox2"),))] == 3.0
    assert samples[("ispmail_takeover_slots_away", (("server", "mbox1"),))] == 2.0
    assert samples[("ispmail_takeover_down_votes", (("server", "mbox1"),))] == 1.0
    assert samples[("ispmail_takeover_down_votes", (("server", "mbox2"),))] == 0.0
    assert samples[("ispmail_takeover_map_age_seconds", ())] == 0.0
    assert samples[("ispmail_takeover_last_takeover_timestamp_seconds", ())] == 0.0
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["servers"]["mbox1"]["votes"] == ["gw2"] and state["servers"]["mbox1"]["stale_votes"] == ["gw3 4900"]
    assert state["servers"]["mbox1"]["state"] == "up"


# The unit -----------------------------------------------------------------------------------

UNIT = AGENT.parents[1] / "templates" / "ispmail-takeover.service.j2"


def unit_text(mode, held, doveadm):
    import jinja2
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["comment"] = lambda text: f"# {text}"
    return env.from_string(UNIT.read_text()).render(
        ansible_managed="Ansible managed", __mailbox_takeover_mode=mode,
        __mailbox_takeover_script="/x/ispmail-takeover", __mailbox_takeover_config_file="/etc/ispmail/takeover.json", __mailbox_takeover_doveadm=str(doveadm),
        mailbox_takeover_held_file=str(held))


def unit_settings(text, name):
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{name}=")]


def test_the_holder_unit_invalidates_the_held_file_then_kicks_every_session(tmp_path):
    """ExecStopPost, run as systemd would (its arguments split like a shell's, no $ or %
    specifiers in them): the held file says `expires 0` (a new file, renamed over the old)
    before doveadm kicks anyone."""
    import shlex
    import subprocess
    held, seen = tmp_path / "run" / "slots-held", tmp_path / "doveadm.log"
    held.parent.mkdir()
    held.write_text(f"expires {int(time.time()) + 14}\n0\n1\n")
    inode = held.stat().st_ino
    doveadm = tmp_path / "doveadm"
    doveadm.write_text(f'#!/bin/sh\necho "$*" >>{seen}\ncat {held} >>{seen}\n')
    doveadm.chmod(0o755)
    text = unit_text("holder", held, doveadm)
    [command] = unit_settings(text, "ExecStopPost")
    assert command.startswith("-") and "$" not in command and "%" not in command
    subprocess.run(shlex.split(command[1:]), check=True, timeout=10)
    assert seen.read_text() == "kick *\nexpires 0\n"
    assert held.read_text() == "expires 0\n" and held.stat().st_ino != inode
    assert sorted(os.listdir(held.parent)) == ["slots-held"]
    assert agent.parse_held(held.read_text()) == (0, [])


def test_the_unit_stops_a_hung_agent_quickly():
    for mode in ("holder", "observer"):
        text = unit_text(mode, "/run/ispmail/slots-held", "/usr/bin/doveadm")
        assert unit_settings(text, "WatchdogSec") == ["10"] and unit_settings(text, "TimeoutStopSec") == ["5"]
        assert unit_settings(text, "RestartPreventExitStatus") == [str(agent.EXIT_REFUSED)]
        assert bool(unit_settings(text, "ExecStopPost")) == (mode == "holder")
