"""The filters of role postfix_multi (main.cf layers, master.cf table, lookup tables), and
the role data postfix_gateway and spamcheck pass it (every instance, every lookup it names)."""

import re
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from postfix_instances import (
    postfix_instance_identity,
    postfix_instance_services,
    postfix_instance_settings,
    postfix_ldap_tables,
    postfix_main_settings,
    postfix_master_line,
    postfix_tables,
)

ROLES = Path(__file__).resolve().parents[2] / "roles"
ROLE = ROLES / "postfix_gateway"
INSTANCES = {
    "submit": {"main": {"smtpd_sasl_auth_enable": True, "default_process_limit": 50}},
    "std": {"main": {"relay_domains": ["ldap:a.cf", "ldap:b.cf"]}},
}


def test_layers_apply_in_order_and_per_instance():
    common = {"default_process_limit": 100, "myhostname": "gw1"}
    group = {"all": {"default_process_limit": 200}, "std": {"myhostname": "mx"}}
    host = {"submit": {"default_process_limit": 300}}
    result = postfix_instance_settings(INSTANCES, common, group, host)
    assert result["submit"]["default_process_limit"] == "300"
    assert result["std"]["default_process_limit"] == "200"
    assert result["std"]["myhostname"] == "mx"
    assert result["submit"]["myhostname"] == "gw1"


def test_values_render_as_main_cf_text():
    result = postfix_instance_settings(INSTANCES, {"biff": False})
    assert result["submit"]["smtpd_sasl_auth_enable"] == "yes"
    assert result["submit"]["biff"] == "no"
    assert result["std"]["relay_domains"] == "ldap:a.cf, ldap:b.cf"


def test_null_removes_a_parameter():
    result = postfix_instance_settings(INSTANCES, {"relayhost": "[x]"}, {"std": {"relayhost": None}})
    assert "relayhost" not in result["std"]
    assert result["submit"]["relayhost"] == "[x]"


def test_parameters_come_out_sorted():
    result = postfix_instance_settings(INSTANCES, {"zz": 1, "aa": 2})
    assert list(result["submit"]) == sorted(result["submit"])


@pytest.mark.parametrize("layer, message", [
    ({"sumbit": {"biff": False}}, "unknown postfix instance 'sumbit'"),
    ({"all": {"Bad-Name": 1}}, "not a main.cf parameter name"),
    ({"std": ["biff"]}, "must be a dict of main.cf parameters"),
    (["std"], "must be a dict of instance name"),
    ({"std": {"relayhost": {"a": 1}}}, "must be a string, number, boolean or list"),
    ({"std": {"smtpd_banner": "a\nb"}}, "must be one line"),
])
def test_bad_layers_fail_clearly(layer, message):
    with pytest.raises(AnsibleFilterError, match=re.escape(message)):
        postfix_instance_settings(INSTANCES, {}, layer)


def test_master_line_with_options():
    line = postfix_master_line({"service": "587", "type": "inet", "private": "n", "command": "smtpd",
                                "options": {"smtpd_tls_security_level": "encrypt",
                                            "smtpd_client_restrictions": ["a", "b"]}})
    assert line.splitlines() == [
        "587  inet  n  -  n  -  -  smtpd",
        "  -o smtpd_tls_security_level=encrypt",
        "  -o { smtpd_client_restrictions = a, b }",
    ]


def test_master_line_needs_a_command():
    with pytest.raises(AnsibleFilterError, match="needs command"):
        postfix_master_line({"service": "smtp"})


def test_role_defines_six_instances_and_every_lookup_they_use():
    data = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    instances = data["__postfix_gateway_instances"]
    assert list(instances) == ["submit", "pbs", "route", "vscan", "mbox", "std"]
    used = set(re.findall(r"ldap_dir }}/([a-z-]+)\.cf", yaml.safe_dump(instances)))
    assert used and used <= set(data["__postfix_gateway_ldap_maps"])
    for name, instance in instances.items():
        assert instance["listeners"], f"{name} has no SMTP listener"


def test_main_settings_merge_flat_layers():
    result = postfix_main_settings({"biff": False, "relayhost": "[a]", "smtp_tls_CAfile": "/ca"},
                                   {"relayhost": None, "alias_maps": ""})
    assert result == {"alias_maps": "", "biff": "no", "smtp_tls_CAfile": "/ca"}


def test_identity_is_fixed_per_instance():
    identity = postfix_instance_identity(INSTANCES, "gateway")
    host = {"submit": {"multi_instance_name": "postfix-other", "queue_directory": "/tmp"}}
    result = postfix_instance_settings(INSTANCES, {}, host, identity)
    assert result["submit"]["multi_instance_name"] == "postfix-submit"
    assert result["submit"]["queue_directory"] == "/var/spool/postfix-submit"
    assert result["std"]["data_directory"] == "/var/lib/postfix-std"
    assert result["std"]["multi_instance_group"] == "gateway"
    assert result["std"]["multi_instance_enable"] == "yes"
    assert result["std"]["syslog_name"] == "postfix-std"
    assert result["std"]["mail_name"] == "Postfix-std"


def test_identity_without_log_names_leaves_postfix_defaults():
    identity = postfix_instance_identity({"edge": {}}, "spamcheck", False)
    assert "syslog_name" not in identity["edge"] and "mail_name" not in identity["edge"]


@pytest.mark.parametrize("instances, group, message", [
    ({"Edge": {}}, "spamcheck", "must be lower case letters and digits"),
    ({"edge": {}}, "spam check", "group 'spam check'"),
    ({}, "spamcheck", "non-empty dict"),
])
def test_identity_rejects_bad_names(instances, group, message):
    with pytest.raises(AnsibleFilterError, match=re.escape(message)):
        postfix_instance_identity(instances, group)


STANDARD = [
    {"service": "pickup", "type": "unix", "command": "pickup"},
    {"service": "relay", "type": "unix", "command": "smtp"},
    {"service": "local", "type": "unix", "unpriv": "n", "command": "local"},
]


def names(services):
    return [f"{s['service']}/{s.get('type', 'inet')}" for s in services]


def test_services_come_in_master_cf_order():
    instances = {"edge": {"listeners": [{"port": 25}],
                          "services": [{"service": "spamscan", "type": "unix", "command": "smtp"}]}}
    shared = [{"service": "dnsblog", "type": "unix", "command": "dnsblog"}]
    result = postfix_instance_services(instances, STANDARD, shared)["edge"]
    assert names(result) == ["25/inet", "spamscan/unix", "dnsblog/unix", "pickup/unix", "relay/unix", "local/unix"]
    assert result[0] == {"service": 25, "type": "inet", "private": "n", "command": "smtpd"}


def test_services_replace_or_drop_standard_entries_in_place():
    relay = {"service": "relay", "type": "unix", "command": "smtp", "options": {"syslog_name": "x/relay"}}
    instances = {"edge": {"services": [relay]}, "scan": {}}
    shared = [{"service": "local", "type": "unix", "state": "absent"}]
    result = postfix_instance_services(instances, STANDARD, shared)
    assert names(result["edge"]) == ["pickup/unix", "relay/unix"]
    assert result["edge"][1] == relay
    assert result["scan"][1] == STANDARD[1]
    assert STANDARD[2]["service"] == "local", "the standard table itself is left alone"


def test_an_instance_may_bring_back_what_the_shared_layer_drops():
    shared = [{"service": "local", "type": "unix", "state": "absent"}]
    instances = {"std": {"services": [{"service": "local", "type": "unix", "command": "local"}]}}
    assert names(postfix_instance_services(instances, STANDARD, shared)["std"])[-1] == "local/unix"


def test_listener_fields_can_be_overridden():
    instances = {"edge": {"listeners": [{"port": "10025", "command": "postscreen", "maxproc": 1}]}}
    line = postfix_master_line(postfix_instance_services(instances, STANDARD)["edge"][0])
    assert line == "10025  inet  n  -  n  -  1  postscreen"


@pytest.mark.parametrize("instance, message", [
    ({"services": [{"service": "virtual", "type": "unix", "state": "absent"}]}, "nothing to remove"),
    ({"listeners": [{"port": 25}, {"port": 25}]}, "25/inet appears twice"),
    ({"listeners": [{"options": {}}]}, "a listener needs a port"),
    ({"services": [{"service": "x", "type": "unix", "comand": "smtp"}]}, "unknown master.cf field(s) comand"),
    ({"services": [{"service": "x", "type": "unix"}]}, "needs command"),
    ({"services": [{"service": "relay", "type": "unix", "state": "gone"}]}, "present or absent"),
    ({"services": ["relay"]}, "must be a dict"),
])
def test_bad_services_fail_clearly(instance, message):
    with pytest.raises(AnsibleFilterError, match=re.escape(message)):
        postfix_instance_services({"edge": instance}, STANDARD)


def test_ldap_maps_become_secret_tables():
    tables = postfix_ldap_tables({"users": {"query_filter": "(mail=%s)", "result_attribute": "mail"}},
                                 "/etc/postfix/ldap/", {"server_host": "ldap://localhost/", "bind_pw": "x"})
    assert tables == [{
        "path": "/etc/postfix/ldap/users.cf",
        "comment": "Postfix LDAP lookup `users`.",
        "settings": {"server_host": "ldap://localhost/", "bind_pw": "x",
                     "query_filter": "(mail=%s)", "result_attribute": "mail"},
        "group": "postfix",
        "mode": "0640",
        "secret": True,
    }]
    assert postfix_ldap_tables({}, "", {}) == []


@pytest.mark.parametrize("maps, directory, message", [
    ({"users": {}}, "ldap", "absolute directory"),
    ({"Users": {}}, "/l", "must be lower case"),
    ({"users": {"query filter": "x"}}, "/l", "not a main.cf parameter name"),
    (["users"], "/l", "dict of name to settings"),
])
def test_bad_ldap_maps_fail_clearly(maps, directory, message):
    with pytest.raises(AnsibleFilterError, match=re.escape(message)):
        postfix_ldap_tables(maps, directory, {})


SETTINGS = {
    "pbs": {"smtpd_relay_restrictions": "check_client_access memcache:/etc/postfix-pbs/pbs.cf, reject"},
    "edge": {"header_checks": "pcre:/etc/postfix-edge/hc.pcre"},
}
SERVICES = {"pbs": [], "edge": [{"service": 25, "command": "smtpd", "options": {"x_maps": ["cidr:/e/a.cidr"]}}]}


def test_tables_render_settings_or_lines_and_find_their_instances():
    tables = postfix_tables([
        {"path": "/etc/postfix-pbs/pbs.cf", "comment": "POP before SMTP.\nSecond line.",
         "settings": {"memcache": "inet:127.0.0.1:11211", "timeout": 2}},
        {"path": "/etc/postfix-edge/hc.pcre", "lines": ["/^X-Spam:/\tIGNORE"], "mode": "0640", "secret": True},
        {"path": "/e/a.cidr", "lines": []},
        {"path": "/etc/postfix-pbs/pbs.cf.old", "lines": ["unused"]},
    ], SETTINGS, SERVICES)
    assert tables[0] == {
        "path": "/etc/postfix-pbs/pbs.cf",
        "lines": ["# POP before SMTP.", "# Second line.", "memcache = inet:127.0.0.1:11211", "timeout = 2"],
        "owner": "root", "group": "root", "mode": "0644", "secret": False, "instances": ["pbs"],
    }
    assert tables[1]["lines"] == ["/^X-Spam:/\tIGNORE"]
    assert (tables[1]["mode"], tables[1]["secret"], tables[1]["instances"]) == ("0640", True, ["edge"])
    assert tables[2]["instances"] == ["edge"], "master.cf options count as a use"
    assert tables[3]["instances"] == ["pbs", "edge"], "a table nobody names reloads every instance"


@pytest.mark.parametrize("table, message", [
    ({"path": "pbs.cf", "lines": []}, "needs an absolute path"),
    ({"path": "/a", "lines": [], "settings": {}}, "either settings (key = value) or lines"),
    ({"path": "/a"}, "either settings (key = value) or lines"),
    ({"path": "/a", "lines": "one"}, "lines must be a list"),
    ({"path": "/a", "lines": ["a\nb"]}, "one line of text"),
    ({"path": "/a", "settings": {"bad key": 1}}, "not a main.cf parameter name"),
    ({"path": "/a", "lines": [], "owner_": "x"}, "unknown field(s) owner_"),
])
def test_bad_tables_fail_clearly(table, message):
    with pytest.raises(AnsibleFilterError, match=re.escape(message)):
        postfix_tables([table], SETTINGS, SERVICES)


def test_a_table_is_written_once():
    with pytest.raises(AnsibleFilterError, match="given twice"):
        postfix_tables([{"path": "/a", "lines": []}, {"path": "/a", "lines": []}], SETTINGS, SERVICES)


def standard_services():
    data = yaml.safe_load((ROLES / "postfix_multi" / "vars" / "main.yml").read_text())
    return data["__postfix_multi_standard_services"]


def test_standard_table_is_postfix_stock_order():
    assert [s["service"] for s in standard_services()] == [
        "pickup", "cleanup", "qmgr", "tlsmgr", "rewrite", "bounce", "defer", "trace", "verify", "flush",
        "proxymap", "proxywrite", "smtp", "relay", "showq", "error", "retry", "discard", "local", "lmtp",
        "anvil", "scache", "postlog"]


def test_gateway_instances_build_with_the_standard_table():
    data = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    services = postfix_instance_services(data["__postfix_gateway_instances"], standard_services(),
                                         data["__postfix_gateway_master_services"])
    for name, table in services.items():
        assert "local/unix" not in names(table), f"{name}: a gateway delivers nothing locally"
    listeners = len(data["__postfix_gateway_instances"]["route"]["listeners"])
    assert names(services["route"])[listeners] == "vscan/unix", "route's own service follows its listeners"


def test_spamcheck_defines_edge_and_scan_and_every_lookup_they_use():
    data = yaml.safe_load((ROLES / "spamcheck" / "vars" / "main.yml").read_text())
    instances = data["__spamcheck_instances"]
    assert list(instances) == ["edge", "scan"]
    used = set(re.findall(r"ldap_dir }}/([a-z-]+)\.cf", yaml.safe_dump(instances)))
    assert used and used <= set(data["__spamcheck_ldap_maps"])
    services = postfix_instance_services(instances, standard_services(), data["__spamcheck_master_services"])
    edge = names(services["edge"])
    assert edge[:3] == ["{{ spamcheck_inbound_port }}/inet", "smtpd/pass", "dnsblog/unix"]
    # postscreen's STARTTLS and the smtp clients' reused TLS connections (both instances).
    assert all(names(table).count("tlsproxy/unix") == 1 for table in services.values())
    assert edge.count("relay/unix") == 1 and "local/unix" in edge
    relay = next(s for s in services["edge"] if s["service"] == "relay")
    assert relay["options"] == {"syslog_name": "postfix-edge/relay", "smtp_host_lookup": "native"}
    tables = [table["path"] for table in data["__spamcheck_tables"]]
    main = yaml.safe_dump(instances["edge"]["main"])
    assert all(path in main for path in tables), "edge names every table spamcheck writes"


def test_spamcheck_edge_refuses_helos_that_are_no_host_names():
    # The HELO goes into the Received header the spam milter reads (issue 16).
    edge = yaml.safe_load((ROLES / "spamcheck" / "vars" / "main.yml").read_text())["__spamcheck_instances"]["edge"]
    helo = edge["main"]["smtpd_helo_restrictions"]
    assert edge["main"]["smtpd_helo_required"] is True
    assert helo[0] == "permit_mynetworks", "the gateways and local mail are never refused"
    assert {"reject_invalid_helo_hostname", "reject_non_fqdn_helo_hostname"} <= set(helo)
    assert "reject_unknown_helo_hostname" not in helo, "real servers often lack DNS for their HELO"


@pytest.mark.parametrize("role, prefix", [("postfix_gateway", "__postfix_gateway"), ("spamcheck", "__spamcheck")])
def test_no_postmaster_notices_on_hosts_that_cannot_deliver_them(role, prefix):
    # A notice to postmaster@<gateway> looped between std and the edge (make resilience).
    data = yaml.safe_load((ROLE.parent / role / "vars" / "main.yml").read_text())
    for layer in ("common", "default"):
        assert data[f"{prefix}_{layer}_settings"]["notify_classes"] == "{{ platform_postfix_notify_classes }}", layer
    platform = yaml.safe_load((ROLE.parent / "platform" / "defaults" / "main.yml").read_text())
    assert platform["platform_postfix_notify_classes"] == ""
