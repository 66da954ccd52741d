"""ispmail-auth-policy (role mailbox_proxy) against real memcached stores.

Two private memcached play two gateways' stores; two policy servers (the real script,
as the gateways run it) each read their own store and write both, as Dovecot's auth
policy client talks to them: POST ?command=allow|report with a JSON body.
"""

import json
import socket
import time
import urllib.request

import pytest

from policy_helpers import Processes

# A window long enough that a loaded CI host (load average 30) still calls within it.
LIMIT, ADDRESS_LIMIT, WINDOW = 3, 5, 4
WEBMAIL = "10.9.0.7"

@pytest.fixture
def gateways(tmp_path):
    """Two stores and two policy servers; yields the policy servers' ports, the stores'
    and the memcached processes."""
    processes = Processes()
    try:
        yield processes.gateway_pair(tmp_path, "mailbox_proxy/files/ispmail-auth-policy",
                                     f"limit = {LIMIT}\naddress_limit = {ADDRESS_LIMIT}\nwindow = {WINDOW}\n"
                                     "ignore = 10.9.0.0/24\npbs_window = 30\nmailbox_hosts = mbox1 mbox2\n")
    finally:
        processes.stop()


def ask(port, command, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/?command={command}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        text = reply.read()
    return json.loads(text) if text else {}


def allowed(port, remote, protocol="imap", login="alice@example.com"):
    return ask(port, "allow", {"login": login, "remote": remote, "protocol": protocol})["status"] == 0


def fail(port, remote, times=1, protocol="imap", login="alice@example.com", refused=False):
    for _ in range(times):
        ask(port, "report", {"login": login, "remote": remote, "protocol": protocol,
                             "success": False, "policy_reject": refused})


def pbs(store, client):
    """The POP-before-SMTP entry of a client in one store, as the pbs instance reads it."""
    with socket.create_connection(("127.0.0.1", store), timeout=5) as conn:
        conn.sendall(f"get pbs:{client}\r\n".encode())
        reply = b""
        while not reply.endswith(b"END\r\n"):
            reply += conn.recv(256)
    return reply.split(b"\r\n")[1].decode() if reply.startswith(b"VALUE") else None


def test_logins_proxied_to_a_legacy_host_authorise_pop_before_smtp_everywhere(gateways):
    (first, _), stores, _ = gateways
    login = {"login": "kenji@old.example", "success": True, "policy_reject": False}
    ask(first, "report", dict(login, remote="192.0.2.30", protocol="pop3", mailbox_host="legacy1"))
    ask(first, "report", dict(login, remote="::ffff:192.0.2.31", protocol="imap", mailbox_host="legacy1"))
    assert [pbs(store, "192.0.2.30") for store in stores] == ["OK", "OK"]
    assert [pbs(store, "192.0.2.31") for store in stores] == ["OK", "OK"]
    # Not recorded here: logins the platform's mailbox servers serve (they record their
    # own), failures, SMTP AUTH, and the platform's own hosts (webmail).
    ask(first, "report", dict(login, remote="192.0.2.32", protocol="imap", mailbox_host="mbox2"))
    ask(first, "report", dict(login, remote="192.0.2.33", protocol="pop3", mailbox_host="legacy1", success=False))
    ask(first, "report", dict(login, remote="192.0.2.34", protocol="smtp", mailbox_host="legacy1"))
    ask(first, "report", dict(login, remote=WEBMAIL, protocol="imap", mailbox_host="legacy1"))
    ask(first, "report", dict(login, remote="192.0.2.35", protocol="imap"))
    for client in ("192.0.2.32", "192.0.2.33", "192.0.2.34", WEBMAIL, "192.0.2.35"):
        assert [pbs(store, client) for store in stores] == [None, None], client


def test_failures_on_one_gateway_refuse_the_address_on_every_gateway(gateways):
    (first, second), _, _ = gateways
    fail(first, "192.0.2.10", LIMIT - 1, protocol="smtp")
    assert allowed(first, "192.0.2.10") and allowed(second, "192.0.2.10")
    fail(second, "192.0.2.10", protocol="pop3")
    assert not allowed(first, "192.0.2.10")
    refusal = ask(second, "allow", {"login": "Alice@Example.com ", "remote": "192.0.2.10", "protocol": "imap"})
    assert refusal["status"] == -1 and "Too many failed logins" in refusal["msg"]
    # Another client address is not affected, nor another account from this address
    # (subscribers behind one carrier NAT address) until the address limit.
    assert allowed(first, "192.0.2.11") and allowed(second, "192.0.2.11")
    assert allowed(first, "192.0.2.10", login="bob@example.com")


def test_trying_many_accounts_from_one_address_hits_the_address_limit(gateways):
    (first, second), _, _ = gateways
    for n in range(ADDRESS_LIMIT):
        assert allowed(second, "192.0.2.15", login=f"user{n}@example.com")
        fail(first, "192.0.2.15", login=f"user{n}@example.com")
    assert not allowed(second, "192.0.2.15", login="somebody-new@example.com")
    assert allowed(second, "192.0.2.16", login="somebody-new@example.com")


def test_the_refusal_ends_a_window_after_the_last_failure(gateways):
    (first, second), _, _ = gateways
    fail(first, "192.0.2.20", LIMIT - 1)
    time.sleep(WINDOW / 2)
    fail(second, "192.0.2.20")  # a failure pushes the end of the window out
    assert not allowed(second, "192.0.2.20")
    time.sleep(WINDOW / 2 + 0.3)
    assert not allowed(first, "192.0.2.20")
    # Refused attempts do not count: a client retrying with the right password gets in
    # a window after its last real failure.
    fail(first, "192.0.2.20", 5, refused=True)
    time.sleep(WINDOW / 2 + 0.3)
    assert allowed(first, "192.0.2.20") and allowed(second, "192.0.2.20")


def test_successes_and_the_platforms_own_hosts_never_count(gateways):
    (first, _), _, _ = gateways
    for _ in range(LIMIT + 2):
        ask(first, "report", {"login": "a", "remote": "192.0.2.30", "success": True, "policy_reject": False})
    assert allowed(first, "192.0.2.30")
    fail(first, WEBMAIL, LIMIT + 2)
    assert allowed(first, WEBMAIL)
    fail(first, "127.0.0.1", LIMIT + 2)
    assert allowed(first, "127.0.0.1")


def test_ipv6_clients_are_counted_per_64(gateways):
    (first, second), _, _ = gateways
    fail(first, "2001:db8:1:2::10", LIMIT - 1)
    fail(first, "2001:db8:1:2:ffff::1")
    assert not allowed(second, "2001:db8:1:2::99")
    assert allowed(second, "2001:db8:1:3::10")
    # An IPv4 client seen as an IPv4-mapped address is the same client.
    fail(first, "::ffff:192.0.2.40", LIMIT)
    assert not allowed(second, "192.0.2.40")


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'{"remote": 5}', b'{"remote": "999.1.1.1"}',
                                  b'{"remote": "a b\\r\\nflush_all"}', "\u3042".encode("utf-8")])
def test_odd_requests_never_refuse_and_never_break_the_server(gateways, body):
    (first, _), _, _ = gateways
    assert ask(first, "allow", body)["status"] == 0
    ask(first, "report", body)
    assert allowed(first, "192.0.2.50")


def test_a_store_that_is_down_lets_logins_through(gateways):
    (first, second), _, processes = gateways
    fail(first, "192.0.2.60", LIMIT)
    processes[0].terminate()  # the first gateway's memcached
    processes[0].wait(5)
    assert allowed(first, "192.0.2.60")  # its own store is gone: fail open
    assert not allowed(second, "192.0.2.60")  # the other gateway still counts
    fail(second, "192.0.2.61", LIMIT)  # writing to a dead store costs a timeout, nothing more
    assert not allowed(second, "192.0.2.61")
