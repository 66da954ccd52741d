"""lb_pool_ratio against a real HAProxy: drain, move, no session dropped, bad input."""

import socket
import threading
import time

import pytest

import lb_pool_ratio


def args(haproxy, ratio, **extra):
    return dict(ratio=ratio, servers=haproxy.servers, pools=haproxy.pools, socket=haproxy.socket,
                poll_interval=0.2, **extra)


def session(port):
    """An open client session through HAProxy; returns (socket, backend name)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    greeting = conn.recv(100).decode()
    return conn, greeting.split()[-1]


def still_talks(conn):
    conn.sendall(b"ping\n")
    return conn.recv(100) == b"ping\n"


def who_answers(port, tries=12):
    names = set()
    for _ in range(tries):
        conn, name = session(port)
        names.add(name)
        conn.close()
    return names


def test_unit_split_is_stable():
    servers = [f"gw0{n}" for n in range(1, 9)]
    before, after = lb_pool_ratio.split(servers, "6:2"), lb_pool_ratio.split(servers, "5:3")
    assert set(before["smtp"]) - set(after["smtp"]) == {"gw06"}
    assert set(after["pop"]) - set(before["pop"]) == {"gw06"}


@pytest.mark.parametrize("ratio, message", [
    ("3:1", "adds up to 4, but there are 3 servers"),
    ("3:0", "each pool needs at least one server"),
    ("two:one", "must look like 5:3"),
    ("2-1", "must look like 5:3"),
    ("", "must look like 5:3"),
])
def test_bad_ratio_fails_before_any_change(haproxy, run_module, ratio, message):
    result = run_module(lb_pool_ratio, **args(haproxy, ratio))
    assert result["failed"] and message in result["msg"]
    assert run_module(lb_pool_ratio, check=True, **args(haproxy, "2:1"))["changed"] is False


def test_unknown_server_and_backend_fail_clearly(haproxy, run_module):
    result = run_module(lb_pool_ratio, **dict(args(haproxy, "2:2"), servers=haproxy.servers + ["gw9"]))
    assert result["failed"] and "backend 'submission' has no server gw9" in result["msg"]
    result = run_module(lb_pool_ratio, **dict(args(haproxy, "2:1"), pools={"smtp": ["nope"], "pop": ["imap"]}))
    assert result["failed"] and "no backend 'nope'" in result["msg"]
    assert run_module(lb_pool_ratio, check=True, **args(haproxy, "2:1"))["changed"] is False


def test_check_mode_reports_without_changing(haproxy, run_module):
    result = run_module(lb_pool_ratio, check=True, diff=True, **args(haproxy, "1:2"))
    assert result["changed"] and list(result["moved"]) == ["gw2"]
    assert result["before"]["smtp"] == ["gw1", "gw2"] and result["after"]["smtp"] == ["gw1"]
    assert result["diff"]["after"] == {"smtp": ["gw1"], "pop": ["gw2", "gw3"]}
    assert who_answers(haproxy.ports["smtp"]) == {"gw1", "gw2"}


def test_moving_keeps_open_sessions_and_waits_for_them(haproxy, run_module):
    # An SMTP session held on gw2 (the server that will move) and one per pop backend.
    smtp_sessions = [session(haproxy.ports["smtp"]) for _ in range(6)]
    on_gw2 = [conn for conn, name in smtp_sessions if name == "gw2"]
    assert on_gw2, "no session landed on gw2"
    imap_conn, _ = session(haproxy.ports["imap"])
    release = threading.Timer(1.5, lambda: [conn.close() for conn in on_gw2])
    release.start()
    started = time.time()
    result = run_module(lb_pool_ratio, **args(haproxy, "1:2", drain_timeout=20))
    assert not result.get("failed"), result
    # It waited for gw2's sessions to end (about 1.5 s), not for the timeout.
    assert 1.0 <= time.time() - started < 15
    assert result["moved"]["gw2"] != "timeout"
    assert result["after"] == {"smtp": ["gw1"], "pop": ["gw2", "gw3"], "mixed": []}
    # Sessions that did not end were never cut.
    assert all(still_talks(conn) for conn, name in smtp_sessions if name != "gw2")
    assert still_talks(imap_conn)
    assert who_answers(haproxy.ports["smtp"]) == {"gw1"}
    assert who_answers(haproxy.ports["imap"]) == {"gw2", "gw3"}
    assert who_answers(haproxy.ports["pop3"]) == {"gw2", "gw3"}
    # Applying the same ratio again changes nothing.
    assert run_module(lb_pool_ratio, **args(haproxy, "1:2"))["changed"] is False


def test_drain_timeout_moves_without_cutting(haproxy, run_module):
    held = [session(haproxy.ports["smtp"]) for _ in range(6)]
    result = run_module(lb_pool_ratio, **args(haproxy, "1:2", drain_timeout=1))
    assert result["moved"]["gw2"] == "timeout"
    assert all(still_talks(conn) for conn, _ in held)
    assert who_answers(haproxy.ports["smtp"]) == {"gw1"}
