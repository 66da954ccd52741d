"""The load balancer's filters: the pool split, and the service map as HAProxy renders it.

That both sides of the PROXY hop use the map's ports: tests/unit/test_wiring.py."""

import pytest
from ansible.errors import AnsibleFilterError

import lb_pool_ratio
from loadbalancer import lb_pool_split

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


SERVICES = {
    "smtp": {"port": 25, "group": "spamcheck", "backend_port": 10025, "proxy_protocol": True, "check": "smtp"},
    "imap": {"port": 143, "group": "gateway", "pool": "pop", "backend_port": 10143, "check": "imap"},
    "imaps": {"port": 993, "group": "gateway", "pool": "pop", "backend_port": 10993, "check": "imap",
              "check_via": "imap"},
}


def test_lb_services_lists_the_map_with_check_ports():
    from loadbalancer import lb_services
    services = lb_services(SERVICES)
    assert [s["name"] for s in services] == ["smtp", "imap", "imaps"]
    assert services[2]["check_port"] == 10143 and "check_port" not in services[1]
    assert services[1]["proxy_protocol"] is True and services[0]["pool"] is None


@pytest.mark.parametrize("change, message", [
    ({"imap": {"port": "x"}}, "imap.port must be a TCP port"),
    ({"imap": {"backend_port": 70000}}, "imap.backend_port must be a TCP port"),
    ({"imap": {"group": "mailbox"}}, "imap.group must be one of"),
    ({"imap": {"pool": None}}, "imap: a gateway service needs pool"),
    ({"smtp": {"pool": "smtp"}}, "smtp: a gateway service needs pool"),
    ({"imap": {"pool": "web"}}, "imap.pool must be smtp or pop"),
    ({"imap": {"check": "http"}}, "imap.check must be one of"),
    ({"imaps": {"check_via": "pop3"}}, "imaps.check_via names no service"),
    ({"imaps": {"port": 143}}, "imaps and imap both use port 143"),
    ({"smtp": {"proxy_protocol": "yes"}}, "smtp.proxy_protocol must be true or false"),
])
def test_lb_services_refuses_bad_entries(change, message):
    from loadbalancer import lb_services
    services = {name: dict(value, **change.get(name, {})) for name, value in SERVICES.items()}
    with pytest.raises(AnsibleFilterError, match=message):
        lb_services(services)
