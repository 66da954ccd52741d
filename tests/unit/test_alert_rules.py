"""The alert rules of role monitoring: `promtool check rules` on every rule file and
`promtool test rules` on tests/prometheus/*.test.yml, which must cover every alert.

Rule templates (roles/monitoring/templates/rules/*.j2) are rendered first with the
lab's values (gateways gw1-gw3, lb_gateway_ratio 2:1, the platform's service map) and
the role's own filters. promtool comes from Debian's prometheus package (`make
host-deps`); without it these tests fail rather than skip.
"""

import re
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml
from loadbalancer import FilterModule

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "monitoring"
TESTS = ROOT / "tests" / "prometheus"
RUNBOOKS = ROOT / "docs" / "runbooks" / "alerts.md"
LAB = {
    "monitoring_lb_gateways": ["gw1", "gw2", "gw3"],
    "monitoring_lb_gateway_ratio": "2:1",
    "monitoring_lb_services": yaml.safe_load((ROOT / "roles/platform/defaults/main.yml").read_text())["platform_services"],
    "ansible_managed": "Managed by Ansible (test)",
}
# The alerts the monitoring spec names (docs/monitoring.md); every one must exist.
ALERTS = {
    "MailDeliveryDelayed", "MailProbeFailing", "PostfixDeferredToServer", "PostfixQueueGrowing",
    "LoadBalancerBackendDown", "LoadBalancerSplitWrong", "ScrapeTargetDown", "LdapProviderDown",
    "LdapReplicaLagging", "RspamdDown", "ClamdDown", "ClamdSignaturesStale", "RedisDown",
    "FilesystemFilling", "InodesFilling", "CertificateExpiring", "MetricsCollectorFailing",
    "MailboxServerUnreachable", "MailboxTakeoverBlocked", "MailboxSlotsAway", "MailboxLeaseLost",
    "MailboxTakeoverAgentStale",
}


def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's prometheus package (make host-deps)")
    return path


def render(template, values=None):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template.parent)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.filters.update(FilterModule().filters())
    env.filters["comment"] = lambda text: "\n".join("# " + line for line in text.splitlines())
    return env.get_template(template.name).render(**(values or LAB))


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory):
    """The rule files as the role installs them, beside the promtool tests."""
    directory = tmp_path_factory.mktemp("rules")
    for path in (ROLE / "files" / "rules").glob("*.yml"):
        shutil.copy(path, directory / path.name)
    for template in (ROLE / "templates" / "rules").glob("*.yml.j2"):
        (directory / template.name.removesuffix(".j2")).write_text(render(template))
    for path in TESTS.glob("*.test.yml"):
        shutil.copy(path, directory / path.name)
    return directory


def rule_files(directory):
    return sorted(p for p in directory.glob("*.yml") if not p.name.endswith(".test.yml"))


def alerts(directory):
    """{alert name: rule} of every rule file."""
    found = {}
    for path in rule_files(directory):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    found[rule["alert"]] = rule
    return found


def test_rule_files_check(rules_dir):
    result = subprocess.run([promtool(), "check", "rules", *map(str, rule_files(rules_dir))],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_named_alert_exists(rules_dir):
    assert set(alerts(rules_dir)) == ALERTS


def test_rules_are_labelled_and_annotated(rules_dir):
    anchors = set(re.findall(r"^## (\w+)", RUNBOOKS.read_text(), re.M)) if RUNBOOKS.exists() else set()
    for name, rule in alerts(rules_dir).items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook_url"] == f"docs/runbooks/alerts.md#{name.lower()}", name
        assert name in anchors, f"docs/runbooks/alerts.md has no section '## {name}'"


def test_every_alert_has_a_unit_test(rules_dir):
    tested = set()
    for path in rules_dir.glob("*.test.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    assert tested == ALERTS


@pytest.mark.parametrize("test_file", sorted(p.name for p in TESTS.glob("*.test.yml")))
def test_promtool_unit_tests(rules_dir, test_file):
    result = subprocess.run([promtool(), "test", "rules", test_file], cwd=rules_dir, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_split_rule_follows_inventory():
    """The rendered rule names the pools lb_pool_split gives for the ratio."""
    production = dict(LAB, monitoring_lb_gateways=[f"gw{i}" for i in range(1, 9)], monitoring_lb_gateway_ratio="6:2")
    rendered = render(ROLE / "templates" / "rules" / "loadbalancer_split.yml.j2", production)
    rule = yaml.safe_load(rendered)["groups"][0]["rules"][0]
    assert 'server=~"gw1|gw2|gw3|gw4|gw5|gw6"' in rule["expr"]
    assert 'server=~"gw7|gw8"' in rule["expr"]
    assert 'proxy=~"submission|submissions|pop_before_smtp"' in rule["expr"]
    assert 'proxy=~"pop3|pop3s|imap|imaps|sieve"' in rule["expr"]
