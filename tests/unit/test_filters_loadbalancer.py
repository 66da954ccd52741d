"""The load balancer's pool split filter, and the ports both sides of the PROXY hop use."""

from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

import lb_pool_ratio
from loadbalancer import lb_pool_split

ROLES = Path(__file__).resolve().parents[2] / "roles"
GATEWAYS = [f"gw0{n}" for n in range(1, 9)]


@pytest.mark.parametrize("ratio", ["6:2", "5:3", "4:4", "1:7", "7:1"])
def test_filter_and_module_split_alike(ratio):
    assert lb_pool_split(GATEWAYS, ratio) == lb_pool_ratio.split(GATEWAYS, ratio)


def test_changing_the_ratio_by_one_moves_one_gateway():
    before, after = lb_pool_split(GATEWAYS, "6:2"), lb_pool_split(GATEWAYS, "5:3")
    assert set(before["smtp"]) ^ set(after["smtp"]) == {"gw06"}


@pytest.mark.parametrize("ratio, message", [
    ("6:3", "adds up to 9, but there are 8"), ("8:0", "at least one"), ("a:b", "must look like"), ("6", "must look like"),
])
def test_bad_ratios_fail_clearly(ratio, message):
    with pytest.raises(AnsibleFilterError, match=message):
        lb_pool_split(GATEWAYS, ratio)


def defaults(role):
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())


def test_load_balancer_backend_ports_are_the_gateways_proxy_listeners():
    services = {s["name"]: s for s in yaml.safe_load((ROLES / "loadbalancer/vars/main.yml").read_text())
                ["__loadbalancer_services"]}
    postfix = defaults("postfix_gateway")["postfix_gateway_haproxy_ports"]
    dovecot = defaults("mailbox_proxy")["mailbox_proxy_haproxy_ports"]
    expected = {"submission": postfix["submission"], "submissions": postfix["submissions"],
                "pop_before_smtp": postfix["pbs"], "pop3": dovecot["pop3"], "pop3s": dovecot["pop3s"],
                "imap": dovecot["imap"], "imaps": dovecot["imaps"], "sieve": dovecot["sieve"]}
    assert {name: services[name]["backend_port"] for name in expected} == expected
