"""playbooks/status.yml's judgement (filter_plugins/health.py): what counts as a problem,
what only as a warning, and that every problem names its host."""

import json

import pytest
from ansible.errors import AnsibleFilterError

from health import haproxy_stat, health_lb, health_queues, health_report, instance_name
from loadbalancer import lb_pool_split, lb_services

SERVICES = lb_services({
    "smtp": {"port": 25, "group": "spamcheck", "backend_port": 10025, "check": "smtp"},
    "submission": {"port": 587, "group": "gateway", "pool": "smtp", "backend_port": 10587, "check": "smtp"},
    "imap": {"port": 143, "group": "gateway", "pool": "pop", "backend_port": 10143, "check": "imap"},
})
GATEWAYS = ["gw1", "gw2", "gw3"]
EXPECT = {"services": SERVICES, "members": {"spamcheck": ["spam1"], "gateway": GATEWAYS},
          "split": lb_pool_split(GATEWAYS, "2:1"), "ratio": "2:1"}
HEADER = "# pxname,svname,qcur,qmax,scur,status,weight\n"


def show_stat(states):
    rows = [f"{backend},FRONTEND,0,0,0,OPEN,1" for backend in states]
    for backend, servers in states.items():
        rows += [f"{backend},{server},0,0,0,{status},1" for server, status in servers.items()]
        rows.append(f"{backend},BACKEND,0,0,0,UP,1")
    return HEADER + "\n".join(rows) + "\n"


HEALTHY = {"smtp": {"spam1": "UP"}, "submission": {"gw1": "UP", "gw2": "UP", "gw3": "MAINT"},
           "imap": {"gw1": "MAINT", "gw2": "MAINT", "gw3": "UP"}}


def ok(stdout, rc=0):
    return {"rc": rc, "stdout": stdout, "stderr": ""}


def test_haproxy_stat_reads_server_rows_only():
    assert haproxy_stat(show_stat(HEALTHY)) == HEALTHY


def test_haproxy_stat_refuses_an_unexpected_answer():
    with pytest.raises(AnsibleFilterError, match="unexpected answer"):
        haproxy_stat("Unknown command\n")


def test_the_split_inventory_gives_is_healthy():
    summary, problems, warnings = health_lb(ok(show_stat(HEALTHY)), **{k: EXPECT[k] for k in EXPECT})
    assert problems == [] and warnings == []
    assert "split smtp=gw1,gw2 pop=gw3 (inventory 2:1)" in summary
    assert "up 4/4" in summary


def test_a_down_gateway_and_a_wrong_split_are_problems_naming_the_server():
    states = json.loads(json.dumps(HEALTHY))
    states["imap"]["gw3"] = "DOWN"
    states["submission"]["gw3"] = "UP"
    _, problems, _ = health_lb(ok(show_stat(states)), **EXPECT)
    assert "backend imap: gw3 is DOWN" in problems
    assert any(p.startswith("split wrong: gw3 serves submission") for p in problems), problems


def test_a_missing_backend_server_is_a_problem():
    states = json.loads(json.dumps(HEALTHY))
    del states["smtp"]["spam1"]
    _, problems, _ = health_lb(ok(show_stat(states)), **EXPECT)
    assert problems == ["backend smtp has no server spam1"]


@pytest.mark.parametrize("name, short", [("-", "postfix"), ("postfix-submit", "submit"), ("postfix-edge", "edge")])
def test_instance_names_as_the_metrics_name_them(name, short):
    assert instance_name(name) == short


def queue_lines(instance, **counts):
    return "\n".join(f"{instance} {q} {counts.get(q, 0)}" for q in ("maildrop", "incoming", "active", "deferred", "hold"))


def test_queues_deferred_over_the_limit_is_a_problem_a_few_a_warning():
    out = queue_lines("postfix-mbox", deferred=30) + "\n" + queue_lines("postfix-std", deferred=2, active=1)
    summary, problems, warnings = health_queues(ok(out))
    assert problems == ["postfix mbox: 30 deferred messages (more than 20)"]
    assert warnings == ["postfix std: 2 deferred"]
    assert "mbox a=0 d=30 h=0" in summary and "std a=1 d=2 h=0" in summary


def test_queue_limits_come_from_the_settings():
    _, problems, _ = health_queues(ok(queue_lines("postfix-edge", active=5)), {"queue_max": 3})
    assert problems == ["postfix edge: 5 messages queued (more than 3)"]


def entry(host, **results):
    return dict({"host": host, "tiers": ["gateway"], "unreachable": False}, **results)


SERVICES_OK = ok("postfix@postfix-submit active\nslapd active\n")


def test_report_ok_when_everything_is_fine():
    report = health_report([entry("gw1", services=SERVICES_OK, queues=ok(queue_lines("postfix-submit")))])
    assert report["ok"] and report["problems"] == []
    assert report["lines"][0].split()[:3] == ["gw1", "gateway", "OK"]


def test_report_names_the_host_and_reason_of_each_problem():
    services = ok("postfix@postfix-submit inactive\nslapd active\nfailed foo.service\n")
    report = health_report([entry("gw1", services=SERVICES_OK),
                            entry("gw3", services=services),
                            entry("gw2", unreachable=True, unreachable_msg="ssh: connect timed out")])
    assert not report["ok"]
    assert report["problems"] == ["gw3: postfix@postfix-submit is inactive",
                                  "gw2: unreachable (ssh: connect timed out)"]
    assert report["warnings"] == ["gw3: unit foo.service failed"]


def test_a_host_without_a_result_is_a_problem_not_a_missing_line():
    report = health_report([entry("gw1", services=SERVICES_OK)], None, ["gw1", "lb1"])
    assert not report["ok"]
    assert report["problems"] == ["lb1: no result: a task failed on this host before the summary (see above)"]
    assert [line.split()[:3] for line in report["lines"] if not line.startswith(" ")] == [
        ["gw1", "gateway", "OK"], ["lb1", "-", "FAIL"]]


def test_a_failed_platform_unit_is_reported_once():
    report = health_report([entry("gw3", services=ok("slapd failed\nfailed slapd.service\n"))])
    assert report["problems"] == ["gw3: slapd is failed"] and report["warnings"] == []


def ldap_result(rc, lag, ready=True, self_uri=None, local_up=True):
    return ok(json.dumps({"self": self_uri, "lag_seconds": lag, "ready": ready, "writable": bool(self_uri) and ready,
                          "reason": "x", "local": {"reachable": local_up, "error": None if local_up else "refused"},
                          "providers": [{"uri": "ldap://ldap1/", "reachable": True}]}), rc)


@pytest.mark.parametrize("result, problem", [
    (ldap_result(0, 0), None),
    (ldap_result(1, 75.0, ready=False), "ldap: replica lagging (lag=75s: x)"),
    (ldap_result(1, None, ready=False), "ldap: replica lagging (lag=unknown: x)"),
    (ldap_result(2, None, ready=False, local_up=False), "ldap: slapd does not answer (refused)"),
    ({"rc": 100, "stdout": ""}, None),
])
def test_ldap_states(result, problem):
    report = health_report([entry("gw1", ldap=result)])
    assert report["problems"] == ([f"gw1: {problem}"] if problem else [])


def test_mailbox_not_answering_is_a_problem():
    report = health_report([entry("mbox1", mailbox=ok("lmtp fail [Errno 111] Connection refused\nimap ok * OK\n"))])
    assert report["problems"] == ["mbox1: lmtp does not answer: [Errno 111] Connection refused"]


def test_unreachable_prometheus_is_a_warning_not_a_problem():
    report = health_report([entry("mon1", probe={"status": -1, "msg": "Connection refused"})])
    assert report["ok"] and report["warnings"] == ["mon1: monitoring: unreachable (Prometheus did not answer the query)"]


def test_probe_delay_over_the_limit_is_a_problem():
    answer = {"status": 200, "json": {"status": "success", "data": {"result": [
        {"metric": {"mailbox_server": "mbox1"}, "value": [0, "0.8"]},
        {"metric": {"mailbox_server": "mbox2"}, "value": [0, "95"]}]}}}
    report = health_report([entry("mon1", probe=answer)])
    assert report["problems"] == ["mon1: probe: delivery to mbox2 took 95s (more than 60s)"]
    assert "probe delay mbox1 0.8s, mbox2 95.0s" in report["lines"][0]


def test_a_command_that_did_not_run_is_a_problem():
    report = health_report([entry("gw1", queues={"rc": 127, "stdout": "", "stderr": "sh: postmulti: not found"})])
    assert report["problems"] == ["gw1: postfix queues: command failed (rc=127: sh: postmulti: not found)"]


def test_sections_of_the_combined_command():
    from health import health_section
    out = ok("### services\nslapd active\n### queues\n### ldap\n{\"a\": 1}\n### ldap rc=1\n")
    assert health_section(out, "services") == {"rc": 0, "stdout": "slapd active", "stderr": ""}
    assert health_section(out, "queues")["stdout"] == ""
    assert health_section(out, "ldap")["rc"] == 1 and health_section(out, "ldap")["stdout"] == '{"a": 1}'
    assert health_section(ok("### services\n### queues\n### ldap\n"), "ldap")["rc"] == 100
    assert health_section({"rc": 2, "stdout": "", "stderr": "boom"}, "queues")["stderr"] == "boom"
