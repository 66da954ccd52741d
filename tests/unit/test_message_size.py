"""Size limits agree end to end, in every inventory.

One value, platform_message_size_limit, is what a client may send. A message Postfix
accepts where mail enters must fit every later hop: the internal Postfix instances,
clamd (clamav-milter streams the message with CRLF line ends), rspamd (the spam milter
and edge's outbound milter do the same), Dovecot's LMTP. And the webmail must not take
an upload that, base64-encoded, submission refuses. The roles' variables and templates
are rendered from the inventories by tests/playbook_vars.py, as Ansible would.
"""

import re

import pytest
import yaml

from message_size import BASE64_GROWTH, message_size_limits
from postfix_instances import postfix_instance_services, postfix_instance_settings
from test_wiring import ROOT, _probe

INVENTORIES = ["inventories/lab", "inventories/production"]
# Where mail enters from clients: the platform's limit, exactly.
ENTRY_INSTANCES = {"gateway": {"submit", "pbs"}, "spamcheck": {"edge"}}
# Headers and the text of a webmail message besides its attachments.
WEBMAIL_HEADERS = 16 * 1024


def _config_value(text, name, label):
    """A `Name value` (clamd) or `name = value;` (rspamd, PHP, Dovecot) setting as a number."""
    found = re.findall(rf"^\s*{name}\s*=?\s*(\S+?);?\s*$", text, re.M)
    assert len(found) == 1, f"{label}: expected one {name} setting, found {found}"
    value = found[0]
    units = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
    if value[-1:].upper() in units:
        return int(value[:-1]) * units[value[-1:].upper()]
    return int(value)


@pytest.fixture(scope="module", params=INVENTORIES)
def rendered(request):
    inventory = [ROOT / request.param]
    result = {"inventory": request.param, "vars": {}, "templates": {}}
    probes = [
        ("playbooks/gateway.yml", ["--var", "__postfix_gateway_instances", "--var", "__postfix_gateway_common_settings",
                                   "--template", "postfix_gateway:clamd.conf.j2",
                                   "--template", "postfix_gateway:clamav-milter.conf.j2"]),
        ("playbooks/spamcheck.yml", ["--var", "__spamcheck_instances", "--var", "__spamcheck_common_settings",
                                     "--template", "spamcheck:rspamd/options.inc.j2"]),
        ("playbooks/mailbox.yml", ["--template", "mailbox:dovecot.conf.j2"]),
        ("playbooks/webmail.yml", ["--var", "__webmail_sizes", "--template", "webmail:php-webmail.ini.j2",
                                   "--template", "webmail:nginx-site.conf.j2"]),
    ]
    for playbook, args in probes:
        for entry in _probe(inventory, playbook, *args):
            result["vars"].update(entry["vars"])
            result["templates"].update(entry["templates"])
    return result


def _instance_limits(vars_, prefix, instances, common):
    """message_size_limit of every instance: main.cf, and each listener's -o override."""
    settings = postfix_instance_settings(vars_[instances], vars_[common], vars_[f"{prefix}_group_settings"],
                                         vars_[f"{prefix}_host_settings"])
    limits = {}
    for name, main in settings.items():
        limits[name] = int(main["message_size_limit"])
    standard = yaml.safe_load((ROOT / "roles/postfix_multi/vars/main.yml").read_text())[
        "__postfix_multi_standard_services"]
    services = postfix_instance_services(vars_[instances], standard, None)
    for name, entries in services.items():
        for service in entries:
            value = (service.get("options") or {}).get("message_size_limit")
            if value is not None:
                limits[f"{name} ({service['service']} listener)"] = int(value)
    return limits


def test_postfix_takes_the_platform_limit_where_mail_enters_and_more_behind(rendered):
    vars_ = rendered["vars"]
    limit = int(vars_["platform_message_size_limit"])
    relay = message_size_limits(limit)["relay"]
    problems = []
    for tier, prefix, instances, common in (("gateway", "postfix_gateway", "__postfix_gateway_instances",
                                             "__postfix_gateway_common_settings"),
                                            ("spamcheck", "spamcheck", "__spamcheck_instances",
                                             "__spamcheck_common_settings")):
        for name, value in _instance_limits(vars_, prefix, instances, common).items():
            if name in ENTRY_INSTANCES[tier]:
                if value != limit:
                    problems.append(f"{tier} {name}: message_size_limit {value}, the platform's limit is {limit}")
            elif value < relay:
                problems.append(f"{tier} {name}: message_size_limit {value} < {relay} (the platform's {limit} "
                                f"and the headers the hops before it add): a message accepted in front bounces here")
    assert not problems, f"{rendered['inventory']}:\n  " + "\n  ".join(problems)


def test_clamd_scans_every_message_vscan_accepts(rendered):
    vars_, templates = rendered["vars"], rendered["templates"]
    limit = int(vars_["platform_message_size_limit"])
    vscan = _instance_limits(vars_, "postfix_gateway", "__postfix_gateway_instances",
                             "__postfix_gateway_common_settings")["vscan"]
    clamd, milter = templates["clamd.conf.j2"], templates["clamav-milter.conf.j2"]
    stream = _config_value(clamd, "StreamMaxLength", "clamd.conf")
    milter_max = _config_value(milter, "MaxFileSize", "clamav-milter.conf")
    clamd_file = _config_value(clamd, "MaxFileSize", "clamd.conf")
    clamd_scan = _config_value(clamd, "MaxScanSize", "clamd.conf")
    # The milter hands clamd the message with CRLF line ends: up to twice vscan's bytes.
    problems = [text for ok, text in [
        (stream >= 2 * vscan, f"clamd StreamMaxLength {stream} < {2 * vscan}: messages vscan accepts "
                              f"(message_size_limit {vscan}, platform {limit}) are deferred, then bounced"),
        (milter_max <= stream, f"clamav-milter MaxFileSize {milter_max} > clamd StreamMaxLength {stream}: "
                               "clamd refuses what the milter sends (OnFail Defer)"),
        (milter_max >= 2 * vscan, f"clamav-milter MaxFileSize {milter_max} < {2 * vscan}: large messages pass "
                                  "unscanned"),
        (clamd_file >= stream, f"clamd MaxFileSize {clamd_file} < StreamMaxLength {stream}"),
        (clamd_scan >= stream, f"clamd MaxScanSize {clamd_scan} < StreamMaxLength {stream}"),
        ("LocalSocket /var/run/clamav/clamd.ctl" in clamd and "unix:/var/run/clamav/clamd.ctl" in milter,
         "clamd's LocalSocket and clamav-milter's ClamdSocket differ"),
    ] if not ok]
    assert not problems, f"{rendered['inventory']}:\n  " + "\n  ".join(problems)


def test_rspamd_takes_every_message_the_milters_send(rendered):
    vars_ = rendered["vars"]
    limits = _instance_limits(vars_, "spamcheck", "__spamcheck_instances", "__spamcheck_common_settings")
    largest = max(limits.values())
    max_message = _config_value(rendered["templates"]["rspamd/options.inc.j2"], "max_message", "rspamd options.inc")
    assert max_message >= 2 * largest, (
        f"{rendered['inventory']}: rspamd max_message {max_message} < {2 * largest}: the milters send the "
        f"message with CRLF line ends (up to twice Postfix's {largest} bytes); rspamd refuses it and the "
        "mail is deferred")


def test_dovecot_stores_every_message_the_gateways_deliver(rendered):
    vars_ = rendered["vars"]
    mbox = _instance_limits(vars_, "postfix_gateway", "__postfix_gateway_instances",
                            "__postfix_gateway_common_settings")["mbox"]
    found = re.findall(r"^\s*quota_max_mail_size\s*=\s*(\d+)\s*$", rendered["templates"]["dovecot.conf.j2"], re.M)
    assert found and int(found[0]) >= 2 * mbox, (
        f"{rendered['inventory']}: Dovecot quota_max_mail_size {found} is below what the mbox instance "
        f"delivers ({mbox} bytes, CRLF counted): LMTP would refuse it for good")


def test_webmail_uploads_fit_what_submission_takes(rendered):
    vars_, templates = rendered["vars"], rendered["templates"]
    submit = _instance_limits(vars_, "postfix_gateway", "__postfix_gateway_instances",
                              "__postfix_gateway_common_settings")["submit"]
    php, nginx = templates["php-webmail.ini.j2"], templates["nginx-site.conf.j2"]
    upload = _config_value(php, "upload_max_filesize", "php-webmail.ini")
    post = _config_value(php, "post_max_size", "php-webmail.ini")
    body = _config_value(nginx, "client_max_body_size", "nginx site")
    roundcube = int(vars_["__webmail_sizes"]["webmail_message"])
    config = (ROOT / "roles/webmail/templates/config.inc.php.j2").read_text()
    problems = [text for ok, text in [
        (upload * BASE64_GROWTH + WEBMAIL_HEADERS <= submit,
         f"PHP upload_max_filesize {upload}: base64-encoded ({upload * BASE64_GROWTH:.0f}) with headers it "
         f"exceeds submit's message_size_limit {submit}; the upload works, sending fails"),
        (upload <= post, f"PHP post_max_size {post} < upload_max_filesize {upload}: uploads fail early"),
        (body == post, f"nginx client_max_body_size {body} != PHP post_max_size {post}"),
        (roundcube <= submit, f"Roundcube max_message_size {roundcube} > submit's message_size_limit {submit}"),
        ("$config['max_message_size'] = {{ __webmail_sizes.webmail_message }};" in config,
         "config.inc.php.j2 does not take max_message_size from __webmail_sizes.webmail_message"),
    ] if not ok]
    assert not problems, f"{rendered['inventory']}:\n  " + "\n  ".join(problems)


def test_one_value_drives_every_role():
    """The roles' own size variables all default to the platform's one value."""
    for role, name in (("postfix_gateway", "postfix_gateway_message_size_limit"),
                       ("spamcheck", "spamcheck_message_size_limit"),
                       ("mailbox", "mailbox_message_size_limit"),
                       ("webmail", "webmail_message_size_limit")):
        defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
        assert defaults[name] == "{{ platform_message_size_limit }}", f"{role}: {name} = {defaults[name]!r}"


@pytest.mark.parametrize("limit", [2 * 1024 * 1024, 10 * 1024 * 1024, 52428800, 157286400])
def test_derived_limits(limit):
    sizes = message_size_limits(limit)
    assert sizes["smtp"] == limit < sizes["relay"] < sizes["milter_stream"] <= sizes["clamd_scan"]
    assert sizes["milter_stream"] >= 2 * sizes["relay"] and sizes["mailbox"] >= 2 * sizes["relay"]
    assert sizes["webmail_upload"] * BASE64_GROWTH + WEBMAIL_HEADERS <= limit and sizes["webmail_message"] <= limit
    assert sizes["webmail_upload"] < sizes["webmail_post"]


@pytest.mark.parametrize("limit", ["fifty", None, 1024])
def test_bad_limits_are_refused(limit):
    from ansible.errors import AnsibleFilterError
    with pytest.raises(AnsibleFilterError, match="platform_message_size_limit"):
        message_size_limits(limit)
