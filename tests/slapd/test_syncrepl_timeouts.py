"""A replica's syncrepl to a provider that does not answer must not hold the replica.

Seen in the lab: with providers being restarted, `systemctl stop slapd` on a replica
waited two minutes for a syncrepl connection attempt. Here the provider's accept queue
is full, so the kernel drops the replica's SYNs (a host that is up but overwhelmed, or a
firewall that drops): without the stanza's network-timeout the connect blocks through
TCP's SYN retries (over two minutes) and slapd's shutdown waits for it. The replica is
configured with the stanza role ldap writes (filter ldap_syncrepl).

Not covered, a limitation of Debian 12's libldap (2.5.13): a provider that accepts
StartTLS and then never completes the handshake keeps the syncrepl thread spinning with
no timeout; systemd's stop timeout ends such a slapd.
"""

import os
import socket
import sys
import time

import pytest

from slapd_servers import BASE_DN, REPLICATOR_DN, REPLICATOR_PW, ROOT, SLAPD, Slapd

sys.path.insert(0, str(ROOT / "filter_plugins"))
from ldap_replication import ldap_syncrepl  # noqa: E402

# The stanza's network-timeout (5 s) and a shutdown, far below TCP's SYN retries.
STOPS_WITHIN = 15


@pytest.fixture
def unanswering_provider():
    """ldap:// URI of a listener that never accepts, its queue filled: new SYNs are dropped."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    time.sleep(0.5)
    yield f"ldap://127.0.0.1:{port}/"
    for sock in fillers + [listener]:
        sock.close()


def test_a_replica_stops_promptly_while_its_provider_does_not_answer(tmp_path, unanswering_provider):
    if not os.path.exists(SLAPD):
        pytest.skip("slapd is not installed (apt-get install slapd ldap-utils)")
    [stanza] = ldap_syncrepl([unanswering_provider], 101, BASE_DN, REPLICATOR_DN, REPLICATOR_PW,
                             "/etc/ssl/certs/ca-certificates.crt")
    replica = Slapd(tmp_path, "replica")
    replica.configure(syncrepls=[stanza], syncprov=False)
    replica.start()
    try:
        time.sleep(3)  # the syncrepl task is connecting
        started = time.monotonic()
        replica.proc.terminate()
        try:
            replica.proc.wait(timeout=STOPS_WITHIN * 2)
        except Exception:  # noqa: BLE001 - still running: measured below
            pass
        took = time.monotonic() - started
        assert replica.proc.poll() is not None and took < STOPS_WITHIN, (
            f"slapd still stopping after {took:.0f} s: its syncrepl hangs connecting to the provider")
    finally:
        if replica.proc.poll() is None:
            replica.proc.kill()
            replica.proc.wait()
