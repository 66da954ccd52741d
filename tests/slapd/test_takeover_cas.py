"""The take-over agent's directory operations against the real slapd of conftest.py (the
project schema from roles/ldap/files/ispmail.ldif): the compare-and-swap of a slot entry,
raced by two takers, the gateways' votes, and the holders' reads.

Each test has a map of its own under the test directory (ou=takeover-<n>), which the agent
is given as its base DN, so no test sees another's changes, nor touches the real ou=slots.
"""

import itertools
import json

import importlib.machinery
import importlib.util
import socket
import sys
import threading
import time
from pathlib import Path

import ldap3
import pytest

AGENT = Path(__file__).resolve().parents[2] / "roles/mailbox_takeover/files/ispmail-takeover"
loader = importlib.machinery.SourceFileLoader("ispmail_takeover", str(AGENT))
agent = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
sys.dont_write_bytecode, _bytecode = True, sys.dont_write_bytecode  # no __pycache__ in the role
loader.exec_module(agent)
sys.dont_write_bytecode = _bytecode

SLOTS = 16
SERVERS = ("mbox1", "mbox2", "mbox3")


def root(slapd):
    return ldap3.Connection(slapd.ldap_uri.rstrip("/"), slapd.root_dn, slapd.root_pw, auto_bind=True,
                            raise_exceptions=False)


_maps = itertools.count()


@pytest.fixture
def base(slapd):
    """A map of SLOTS slots held by mbox1 at epoch 1, server entries, and a user with a slot."""
    name = f"takeover-{next(_maps)}"
    base = f"ou={name},{slapd.base_dn}"
    conn = root(slapd)
    entries = [(base, ["organizationalUnit"], {"ou": name}),
               (f"ou=slots,{base}", ["organizationalUnit"], {"ou": "slots"}),
               (f"ou=domains,{base}", ["organizationalUnit"], {"ou": "domains"})]
    entries += [(f"cn={n},ou=slots,{base}", ["ispmailMailboxSlot"],
                 {"cn": str(n), "ispmailMailboxHost": "mbox1", "ispmailSlotEpoch": "1", "ispmailSlotHome": "mbox1"})
                for n in range(SLOTS)]
    entries += [(f"cn={s},ou=slots,{base}", ["ispmailMailboxServer"], {"cn": s}) for s in SERVERS]
    entries += [(f"mail=ann@example.test,ou=domains,{base}", ["inetOrgPerson", "ispmailUser"],
                 {"cn": "Ann", "sn": "Ann", "mail": "ann@example.test", "ispmailEnabled": "TRUE",
                  "ispmailMailboxSlot": f"cn=3,ou=slots,{base}"}),
                (f"mail=pat@example.test,ou=domains,{base}", ["inetOrgPerson", "ispmailUser"],
                 {"cn": "Pat", "sn": "Pat", "mail": "pat@example.test", "ispmailEnabled": "TRUE",
                  "ispmailMailboxHost": "mbox2"}),
                (f"mail=bad@example.test,ou=domains,{base}", ["inetOrgPerson", "ispmailUser"],
                 {"cn": "Bad", "sn": "Bad", "mail": "bad@example.test", "ispmailEnabled": "TRUE",
                  "ispmailMailboxSlot": f"cn=3,ou=domains,{base}"})]
    for dn, classes, attrs in entries:
        assert conn.add(dn, classes, attrs), (dn, conn.result)
    conn.unbind()
    yield base
    conn = root(slapd)
    for dn, _, _ in reversed(entries):
        conn.delete(dn)
    conn.unbind()


def ldap(slapd, **timeouts):
    """The agent's own connection class, as the agents use it (no TLS on the private slapd)."""
    return agent.Ldap(slapd.ldap_uri, slapd.root_dn, slapd.root_pw, starttls=False, **timeouts)


def test_holders_read_the_map(slapd, base):
    slots = ldap(slapd).run(lambda conn: agent.read_slots(conn, base, home=True))
    assert slots == {n: agent.Slot("mbox1", 1, "mbox1") for n in range(SLOTS)}


def test_two_takers_race_and_exactly_one_wins(slapd, base):
    """Both read (mbox1, epoch 1) and swap at the same moment on the arbiter: per slot, one
    modify succeeds and the other fails with noSuchAttribute."""
    takers = [ldap(slapd), ldap(slapd)]
    for taker in takers:
        taker.connection()
    results = {}
    for number in range(SLOTS // 2):
        start = threading.Barrier(2)

        def take(index, new):
            start.wait()
            results[(number, index)] = takers[index].run(
                lambda conn: agent.compare_and_swap(conn, base, number, "mbox1", new, 1))

        threads = [threading.Thread(target=take, args=(0, "mbox2")), threading.Thread(target=take, args=(1, "mbox3"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted([results[(number, 0)], results[(number, 1)]]) == [False, True], number
    slots = takers[0].run(lambda conn: agent.read_slots(conn, base))
    for number in range(SLOTS // 2):
        winner = "mbox2" if results[(number, 0)] else "mbox3"
        assert slots[number] == agent.Slot(winner, 2)


def test_a_stale_swap_fails_with_no_such_attribute_and_changes_nothing(slapd, base):
    number = SLOTS - 1
    conn = root(slapd)
    assert agent.compare_and_swap(conn, base, number, "mbox1", "mbox2", 1) is True
    # The loser's modify as it reaches slapd: the old holder and epoch are gone.
    changes = {agent.HOST: [(ldap3.MODIFY_DELETE, ["mbox1"]), (ldap3.MODIFY_ADD, ["mbox3"])],
               agent.EPOCH: [(ldap3.MODIFY_DELETE, ["1"]), (ldap3.MODIFY_ADD, ["2"])]}
    assert not conn.modify(f"cn={number},ou=slots,{base}", changes)
    assert conn.result["result"] == 16 and conn.result["description"] == "noSuchAttribute"
    # Right holder, stale epoch: refused as a whole too (one modify is atomic).
    assert agent.compare_and_swap(conn, base, number, "mbox2", "mbox3", 1) is False
    assert agent.read_slots(conn, base)[number] == agent.Slot("mbox2", 2)
    # The epoch is an integer: the next swap names it as read.
    assert agent.compare_and_swap(conn, base, number, "MBOX2", "mbox1", 2) is True
    assert agent.read_slots(conn, base)[number] == agent.Slot("mbox1", 3)
    conn.unbind()


def test_a_vote_round_trip(slapd, base):
    """Votes carry their time; a refresh replaces a gateway's value in one modify; only fresh
    votes count; a withdrawal removes every value of the gateway."""
    arbiter = ldap(slapd)
    vote = lambda gateway, down, when=None: arbiter.run(
        lambda conn: agent.set_vote(conn, base, "mbox1", gateway, down, when))
    votes = lambda: arbiter.run(lambda conn: agent.read_votes(conn, base, "mbox1"))
    assert votes() == []
    assert vote("gw1", True, 1000) and vote("gw2", True, 1003)
    assert vote("gw1", True, 1000)  # the same value: nothing to change
    assert votes() == ["gw1 1000", "gw2 1003"]
    assert vote("gw1", True, 1010)
    assert votes() == ["gw1 1010", "gw2 1003"]
    assert agent.fresh_votes(votes(), 1035) == ["gw1"]  # gw2's is 32 s old
    assert agent.has_quorum(agent.fresh_votes(votes(), 1030), ["gw1", "gw2", "gw3"])
    assert not agent.has_quorum(agent.fresh_votes(votes(), 1035), ["gw1", "gw2", "gw3"])
    # A value from before votes had a time, and one spelled in capitals: both this gateway's.
    conn = root(slapd)
    assert conn.modify(f"cn=mbox1,ou=slots,{base}", {agent.VOTE: [(ldap3.MODIFY_ADD, ["gw1", "GW1 7"])]})
    conn.unbind()
    assert vote("gw1", False)
    assert vote("gw1", False)  # already gone: fine
    assert votes() == ["gw2 1003"] and not agent.has_quorum(agent.fresh_votes(votes(), 1003), ["gw1", "gw2", "gw3"])
    assert arbiter.run(lambda conn: agent.read_all_votes(conn, base)) == {"mbox1": ["gw2 1003"], "mbox2": [],
                                                                           "mbox3": []}
    assert vote("gw2", False) and votes() == []
    assert arbiter.run(lambda conn: agent.read_votes(conn, base, "mbox9")) == []


def test_users_slots_from_the_directory(slapd, base):
    slots = agent.UserSlots(ldap(slapd), base)
    users = ["ann@example.test", "ANN@example.test", "pat@example.test", "nobody@example.test", "bad@example.test"]
    assert slots(users) == {"ann@example.test": 3, "ANN@example.test": 3, "pat@example.test": agent.PINNED,
                            "nobody@example.test": agent.PINNED, "bad@example.test": agent.UNPARSABLE}
    assert agent.sessions_to_end(users, slots(users), {3}) == ["bad@example.test"]


def test_a_map_over_the_size_limit_is_refused(slapd, base):
    """A service account gets slapd's size limit (500 here: slapd's default; ldap_size_limit on the
    platform) and sizeLimitExceeded for a larger map; an unlimited account gets every entry. The
    agent refuses both rather than take a cut map for the whole."""
    conn = root(slapd)
    extra = [f"cn={n},ou=slots,{base}" for n in range(SLOTS, agent.MAX_SLOTS + 1)]
    reader = f"cn=reader,{base}"
    try:
        for dn in extra:
            assert conn.add(dn, ["ispmailMailboxSlot"], {"cn": dn[3:dn.index(",")], "ispmailMailboxHost": "mbox1",
                                                         "ispmailSlotEpoch": "1"}), conn.result
        assert conn.add(reader, ["person"], {"cn": "reader", "sn": "reader", "userPassword": "reader-secret"})
        with pytest.raises(agent.MapTooLarge, match="size limit"):
            agent.Ldap(slapd.ldap_uri, reader, "reader-secret", starttls=False).run(
                lambda c: agent.read_slots(c, base))
        with pytest.raises(agent.MapTooLarge, match="501 entries"):
            ldap(slapd).run(lambda c: agent.read_slots(c, base))
        conn.delete(extra.pop())
        assert len(agent.Ldap(slapd.ldap_uri, reader, "reader-secret", starttls=False).run(
            lambda c: agent.read_slots(c, base))) == agent.MAX_SLOTS
    finally:
        for dn in extra + [reader]:
            conn.delete(dn)
        conn.unbind()


def test_an_unanswering_provider_fails_within_the_timeouts():
    """A provider that accepts nothing (its queue full, SYNs dropped) costs a holder's read at
    most its connect timeout, and the error says which provider."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        uri = f"ldap://127.0.0.1:{listener.getsockname()[1]}/"
        started = time.monotonic()
        with pytest.raises(agent.LdapError, match="127.0.0.1"):
            agent.Ldap(uri, "cn=x", "x", starttls=False, connect_timeout=1, receive_timeout=1).run(
                lambda conn: agent.read_slots(conn, "dc=ispmail,dc=test"))
        assert time.monotonic() - started < 5
    finally:
        for sock in fillers + [listener]:
            sock.close()


class Commands:
    """doveadm and friends, recorded instead of run."""

    def __init__(self):
        self.calls = []

    def run(self, argv, quiet=False, timeout=None):
        self.calls.append(tuple(argv))
        return 0, ""

    def flush_auth_cache(self, timeout=None):
        self.calls.append(("auth cache flush",))

    def sessions(self, timeout=None):
        return []

    def kick(self, user, timeout=None):
        self.calls.append(("kick", user))

    def kick_all(self, timeout=None):
        self.calls.append(("kick", "*"))

    def kill_dovecot(self, timeout=None):
        self.calls.append(("kill",))

    def proxied(self):
        return []

    def proxy_kick_host(self, address):
        self.calls.append(("proxy kick -h", address))

    def proxy_kick_users(self, users):
        self.calls.append(("proxy kick", *users))


def daemon_config(slapd, base, tmp_path, **more):
    # The same slapd under two names: two "providers" that always agree.
    port = slapd.ldap_uri.rstrip("/").rsplit(":", 1)[1]
    return {"base_dn": base, "providers": [slapd.ldap_uri, f"ldap://localhost:{port}/"],
            "local_uri": slapd.ldap_uri, "bind_dn": slapd.root_dn, "bind_password": slapd.root_pw, "starttls": False,
            "lease": 20, "fence_margin": 6, "open_margin": 2, "state_file": str(tmp_path / "state.json"), **more}


def test_holder_round_against_the_directory(slapd, base, tmp_path):
    """A restarted holder reopens at once what it held before; the rest waits for the lease."""
    conn = root(slapd)
    assert agent.compare_and_swap(conn, base, 5, "mbox1", "mbox2", 1)
    conn.unbind()
    (tmp_path / "known.json").write_text(agent.known_text({0: 1, 1: 1, 5: 1}))
    config = daemon_config(slapd, base, tmp_path, mode="holder", name="mbox1", held_file=str(tmp_path / "held"),
                           known_file=str(tmp_path / "known.json"), renew_interval=4)
    daemon = agent.HolderDaemon(config, commands=Commands())
    daemon.round()
    expires, slots = agent.parse_held((tmp_path / "held").read_text())
    assert slots == [0, 1] and 0 < expires - time.time() <= 14
    assert agent.load_known(str(tmp_path / "known.json")) == {0: 1, 1: 1}  # 5 is mbox2's now
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["lease"]["valid"] and state["open_slots"] == "0-1"
    assert sorted(map(int, state["pending"])) == [n for n in range(SLOTS) if n not in (0, 1, 5)]
    assert all(p["ok"] for p in state["providers"].values())


def test_observers_take_over_a_dead_server(slapd, base, tmp_path, monkeypatch):
    """gw1 sees mbox1 die; with gw2's vote (2 of 3) it moves mbox1's slots to mbox2 and mbox3
    on the arbiter, and follows the change in its replica: auth cache, proxied sessions,
    and the queue flushes scheduled after the lease wait."""
    clock = [1000.0]
    monkeypatch.setattr(agent.time, "monotonic", lambda: clock[0])
    dead = {"mbox1"}
    config = daemon_config(slapd, base, tmp_path, mode="observer", name="gw1", gateways=["gw1", "gw2", "gw3"],
                           servers={"mbox1": "10.0.0.41", "mbox2": "10.0.0.42", "mbox3": "10.0.0.43"},
                           probe_failures=5, flush_commands=["/usr/sbin/postqueue -c /etc/postfix-mbox -f"],
                           flush_after=[3, 15])
    commands = Commands()
    daemon = agent.ObserverDaemon(config, commands=commands,
                                  probe=lambda address, *_: (address != "10.0.0.41" or not dead, "refused"))
    arbiter = ldap(slapd)
    arbiter.run(lambda conn: agent.set_vote(conn, base, "mbox1", "gw1", True))  # a vote left from before
    fresh = lambda: agent.fresh_votes(arbiter.run(lambda conn: agent.read_votes(conn, base, "mbox1")), time.time())
    for _ in range(4):
        daemon.round()
        clock[0] += 2
    assert not daemon.health["mbox1"].down
    assert arbiter.run(lambda conn: agent.read_votes(conn, base, "mbox1")) == []  # withdrawn at start
    daemon.round()
    assert daemon.health["mbox1"].down
    assert fresh() == ["gw1"]
    assert {s.holder for s in arbiter.run(lambda conn: agent.read_slots(conn, base)).values()} == {"mbox1"}
    arbiter.run(lambda conn: agent.set_vote(conn, base, "mbox1", "gw2", True))
    clock[0] += 2
    daemon.round()
    slots = arbiter.run(lambda conn: agent.read_slots(conn, base))
    assert all(slot.epoch == 2 and slot.holder == agent.rendezvous(n, ["mbox2", "mbox3"]) for n, slot in slots.items())
    assert ("auth cache flush",) in commands.calls and ("proxy kick -h", "10.0.0.41") in commands.calls
    assert sorted(round(when - clock[0]) for when, _ in daemon.flushes) == [23, 35]
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["servers"]["mbox1"]["state"] == "down" and state["servers"]["mbox1"]["votes"] == ["gw1", "gw2"]
    assert state["last_takeover"]["server"] == "mbox1"
    # mbox1 is back: the vote is withdrawn after two good probes; fail-back moves its slots home.
    dead.clear()
    for _ in range(2):
        clock[0] += 2
        daemon.round()
    assert fresh() == ["gw2"]
    code, message = arbiter.run(lambda conn: agent.failback(config, "mbox1", conn, daemon.state()))
    assert code == 0 and message.startswith(f"moved {SLOTS} slots back to mbox1")
    assert {(s.holder, s.epoch) for s in arbiter.run(lambda conn: agent.read_slots(conn, base)).values()} == {
        ("mbox1", 3)}


def notifications(tmp_path):
    """A NOTIFY_SOCKET as systemd's: a datagram socket; returns (path, socket)."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    return path, sock


def run_agent(config, tmp_path, mode):
    import os
    import subprocess
    path = tmp_path / "takeover.json"
    path.write_text(json.dumps(config))
    notify, sock = notifications(tmp_path)
    proc = subprocess.Popen([sys.executable, str(AGENT), "--config", str(path), mode], stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, NOTIFY_SOCKET=notify, PYTHONDONTWRITEBYTECODE="1"))
    return proc, sock


def stop(proc):
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=10)
    except Exception:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_the_holder_runs_under_systemd_notify(slapd, base, tmp_path):
    """The daemon as systemd runs it: READY=1 before its first round, WATCHDOG=1 every loop,
    the held file and the state written, `status` reads them."""
    (tmp_path / "known.json").write_text(agent.known_text({2: 1}))
    config = daemon_config(slapd, base, tmp_path, mode="holder", name="mbox1", held_file=str(tmp_path / "run/held"),
                           known_file=str(tmp_path / "known.json"), renew_interval=1, doveadm="/bin/true",
                           systemctl="/bin/true")
    proc, sock = run_agent(config, tmp_path, "holder")
    try:
        messages = [sock.recv(100) for _ in range(4)]
        assert messages[0] == b"READY=1"
        assert messages.count(b"WATCHDOG=1") >= 2
        expires, slots = agent.parse_held((tmp_path / "run/held").read_text())
        assert slots == [2] and expires > time.time()
        assert stat_mode(tmp_path / "run/held") == 0o644
    finally:
        err = stop(proc)
    assert "opened slots 2 at epoch 1" in err, err
    assert agent.main(["--config", str(tmp_path / "takeover.json"), "status"]) == 0


def stat_mode(path):
    import stat
    return stat.S_IMODE(path.stat().st_mode)


def test_the_observer_runs_under_systemd_notify(slapd, base, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def lmtp():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as stream:
                conn.sendall(b"220 ready\r\n")
                for line in stream:
                    conn.sendall(b"250 ok\r\n" if line.startswith(b"LHLO") else b"221 bye\r\n")
                    if line.startswith(b"QUIT"):
                        break

    threading.Thread(target=lmtp, daemon=True).start()
    config = daemon_config(slapd, base, tmp_path, mode="observer", name="gw1", gateways=["gw1"],
                           servers={"mbox1": "127.0.0.1", "mbox2": "127.0.0.2"},
                           lmtp_port=listener.getsockname()[1], probe_interval=0.5, doveadm="/bin/true",
                           flush_commands=["/bin/true"])
    proc, sock = run_agent(config, tmp_path, "observer")
    try:
        assert b"READY=1" in [sock.recv(100) for _ in range(8)]  # WATCHDOG=1 between the first round's steps
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            state = agent.read_state(config)
            if state and state["servers"]["mbox2"]["state"] == "down":
                break
            time.sleep(0.2)
        assert state["servers"]["mbox1"]["state"] == "up", json.dumps(state)
        assert state["servers"]["mbox2"]["state"] == "down", json.dumps(state)  # nobody listens on 127.0.0.2
        # gw1 alone is a majority of one: mbox1's slots stay, mbox2 held none.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and agent.read_state(config)["servers"]["mbox2"]["votes"] != ["gw1"]:
            time.sleep(0.2)
        assert agent.read_state(config)["servers"]["mbox2"]["votes"] == ["gw1"]
    finally:
        err = stop(proc)
        listener.close()
    assert "mbox2 is DOWN from here" in err, err
