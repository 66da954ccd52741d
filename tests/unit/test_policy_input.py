"""The policy helpers' parsers of what clients send (Postfix policy requests, Dovecot auth
policy requests, the login's client address), with any input: an answer, never an
exception, and never a refusal or deferral that the input alone caused."""

import ipaddress
import re
from unittest import mock

import ispmail_policy
from header_strategies import addresses
from hypothesis import example, given
from hypothesis import strategies as st
from scripts import load

send_limit = load("postfix_gateway/files/ispmail-send-limit")
auth_policy = load("mailbox_proxy/files/ispmail-auth-policy")
pop_before_smtp = load("mailbox/files/ispmail-pop-before-smtp")

LIMIT = 10
STORE = ("127.0.0.1", 11211)
# Values as the policy server reads them off the socket (8-bit bytes as surrogates).
wire_text = st.text(max_size=40) | st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))
# A memcached key: no white space or control characters, at most 250 bytes.
MEMCACHED_KEY = re.compile(r"[\x21-\x7e]{1,250}")


def quiet_stores(used=0):
    """The gateways' stores, answering `used` to every read."""
    return mock.patch.multiple(ispmail_policy, value=mock.Mock(return_value=used), add_everywhere=mock.Mock())


@given(st.dictionaries(st.sampled_from(["protocol_state", "sasl_username", "client_address", "recipient_count",
                                        "sender", "recipient"]) | wire_text,
                       wire_text | st.sampled_from(["END-OF-MESSAGE", "end-of-message", "1", "-5", "1e9", "٣"])))
@example({"protocol_state": "END-OF-MESSAGE", "sasl_username": "\udcff", "recipient_count": "x"})
def test_send_limit_answers_any_request(request):
    with quiet_stores():
        action = send_limit.decide({"limit": LIMIT, "period": 3600, "local": STORE, "stores": [STORE]}, request)
    assert "\n" not in action
    assert action == "DUNNO" or action.startswith("552 5.5.3 More recipients"), action
    if action.startswith("552"):
        assert int(request["recipient_count"]) > LIMIT


@given(wire_text | addresses | st.sampled_from(["::ffff:192.0.2.1", "2001:db8::1%eth0", "192.0.2.1 ", ""]))
def test_client_keys_are_memcached_keys_or_none(remote):
    key = auth_policy.client_key(remote, [ipaddress.ip_network("10.9.0.0/24")])
    assert key is None or MEMCACHED_KEY.fullmatch(key)
    if key is not None:
        assert MEMCACHED_KEY.fullmatch(auth_policy.login_key(key, remote))


json_values = st.recursive(st.none() | st.booleans() | st.integers() | wire_text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=6)


@given(st.dictionaries(st.sampled_from(["remote", "login", "protocol", "success", "policy_reject", "mailbox_host"]),
                      json_values))
@example({"remote": "192.0.2.1", "login": ["a", 1]})
@example({"remote": "::ffff:192.0.2.1", "protocol": "pop3", "success": True, "mailbox_host": "legacy1"})
def test_auth_policy_allows_any_request_below_the_limits(request):
    policy = auth_policy.Policy({"local": STORE, "stores": [STORE], "ignored": [], "limit": 3, "address_limit": 5,
                                 "window": 60, "pbs_window": 60, "mailbox_hosts": "mbox1"})
    with quiet_stores():
        assert policy.allow(request) == {"status": 0}
        policy.report(request)


@given(wire_text | st.sampled_from(["192.0.2.1", "2001:db8::1", "::", "1.2.3", "fe80::1%eth0", "a:b"]))
def test_only_literal_addresses_are_recorded(value):
    ip = pop_before_smtp.literal_address(value)
    assert ip is None or (ip == value and MEMCACHED_KEY.fullmatch(f"pbs:{ip}") and ipaddress.ip_address(ip))
