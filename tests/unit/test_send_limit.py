"""ispmail-send-limit (role postfix_gateway) against real memcached stores, spoken to in
Postfix's policy protocol as submit and pbs do at the end of each message."""

import socket

import pytest

from policy_helpers import Processes

LIMIT = 5


@pytest.fixture
def gateways(tmp_path):
    """Two gateways' stores and policy servers; yields the servers' ports and the stores' processes."""
    processes = Processes()
    try:
        servers, _, stores = processes.gateway_pair(tmp_path, "postfix_gateway/files/ispmail-send-limit",
                                                    f"limit = {LIMIT}\nperiod = 60\n")
        yield servers, stores
    finally:
        processes.stop()


def ask(port, *requests):
    """Send policy requests on one connection; the actions, in order."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        replies = []
        stream = conn.makefile("rwb")
        for attributes in requests:
            stream.write(b"".join(f"{k}={v}\n".encode() for k, v in attributes.items()) + b"\n")
            stream.flush()
            lines = []
            while (line := stream.readline().rstrip(b"\n")) != b"":
                lines.append(line.decode())
            replies.append(lines[0].removeprefix("action="))
        return replies


def message(login="", client="192.0.2.1", sender="alice@example.com", recipients=1, state="END-OF-MESSAGE"):
    return {"request": "smtpd_access_policy", "protocol_state": state, "protocol_name": "ESMTP",
            "client_address": client, "sasl_username": login, "sender": sender,
            "recipient_count": str(recipients)}


def test_every_message_counts_null_sender_too_on_every_gateway(gateways):
    (first, second), _ = gateways
    login = "alice@example.com"
    answers = ask(first, *[message(login, sender="" if n % 2 else login) for n in range(3)])
    answers += ask(second, message(login, sender="", recipients=2))
    assert answers == ["DUNNO"] * 4
    refused = ask(first, message(login), message(login.upper(), sender=""))
    assert all(action.startswith("451 4.7.1 Sending limit reached") for action in refused), refused
    # Other subscribers, and other stages of the session, are not affected.
    assert ask(second, message("bob@example.com"), message(login, state="RCPT")) == ["DUNNO", "DUNNO"]


def test_without_a_login_the_client_address_is_the_subscriber(gateways):
    (first, second), _ = gateways
    senders = ["a@example.com", "b@example.org", "c@example.net", "", "d@example.com"]
    assert ask(first, *[message(client="192.0.2.9", sender=s) for s in senders]) == ["DUNNO"] * LIMIT
    assert ask(second, message(client="192.0.2.9", sender="e@example.com"))[0].startswith("451")
    assert ask(second, message(client="192.0.2.10")) == ["DUNNO"]


def test_one_message_over_the_whole_limit_is_refused_for_good(gateways):
    (first, _), _ = gateways
    assert ask(first, message("carol@example.org", recipients=LIMIT + 1))[0].startswith("552 5.5.3")
    assert ask(first, message("carol@example.org", recipients=LIMIT)) == ["DUNNO"]


@pytest.mark.parametrize("odd", [{"recipient_count": "many"}, {"sasl_username": "\u3042 x"}, {"client_address": ""},
                                 {"protocol_state": ""}])
def test_odd_requests_get_an_answer(gateways, odd):
    (first, _), _ = gateways
    assert ask(first, {**message(), **odd}) == ["DUNNO"]


def test_a_dead_local_store_lets_mail_through(gateways):
    (first, second), stores = gateways
    assert ask(first, *[message("dave@example.org")] * LIMIT) == ["DUNNO"] * LIMIT
    stores[0].terminate()
    stores[0].wait(5)
    assert ask(first, message("dave@example.org")) == ["DUNNO"]  # its store is gone: no brake
    assert ask(second, message("dave@example.org"))[0].startswith("451")  # the other still counts
