"""The filter that merges the gateway's Postfix instance settings, and the role data
it is used with (every instance, every LDAP lookup it names)."""

import re
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from postfix_instances import postfix_instance_settings, postfix_master_line

ROLE = Path(__file__).resolve().parents[2] / "roles" / "postfix_gateway"
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
