"""The bench's `hops` configuration (tests/bench/side_by_side/peers.py): six chained Postfix
hops, the floor the platform's hop count sets. A chain that skipped or looped a hop would
give a wrong floor."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "side_by_side"))
import peers  # noqa: E402

ENTRY = re.compile(r"^127\.0\.0\.1:(\d+)/inet=127\.0\.0\.1:(\d+) inet n - n - - smtpd "
                   r"-o myhostname=(\S+) -o content_filter=(\S*)$")


def test_each_hop_hands_on_to_the_next_and_the_last_to_the_relayhost():
    entries = [ENTRY.match(entry) for entry in peers.hop_services()]
    assert all(entries) and len(entries) == 6 == len(peers.HOPS_PORTS)
    ports = [int(entry.group(1)) for entry in entries]
    assert ports == peers.HOPS_PORTS and all(int(e.group(2)) == int(e.group(1)) for e in entries)
    filters = [entry.group(4) for entry in entries]
    assert filters[:-1] == [f"smtp:[127.0.0.1]:{port}" for port in ports[1:]]
    # The last hop filters nowhere: its mail goes to the relayhost, smtp-sink.
    assert filters[-1] == "" and "relayhost=[127.0.0.1]:2526" in peers.BARE


def test_every_hop_greets_with_a_name_of_its_own():
    # The smtp client calls a server greeting with its own name a mail loop.
    names = [ENTRY.match(entry).group(3) for entry in peers.hop_services()]
    assert len(set(names)) == len(names)
    assert not any(name.startswith("bench-peer") for name in names)
