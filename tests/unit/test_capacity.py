"""The capacity model (filter_plugins/capacity.py): servers per tier and process limits
from the declared flow, the inventories' inputs, and what it refuses.

Properties (hypothesis): more flow never needs fewer servers nor lower limits, N+1 means
at least two servers per tier (four gateways: two per pool), and a verdict is yes only
when every tier has what it needs.
"""

import copy

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from hypothesis import given
from hypothesis import strategies as st

from capacity import COST_KEYS, LIMIT_GROUPS, TODAY_KEYS, capacity_plan, capacity_verdict
from test_wiring import ROOT

TODAY = {
    "messages_in_per_minute": 300, "messages_out_per_minute": 150, "message_size_kib": 60,
    "recipients_per_message": 1.3, "spam_check_share": 0.6, "virus_check_share": 0.8,
    "pop_imap_sessions": 1000, "pop_imap_session_seconds": 20, "mailboxes": 300000, "mailbox_size_mib": 150,
}
COSTS = {"loadbalancer_per_message": 0.0005, "spamcheck_per_message": 0.03, "gateway_per_message": 0.05,
         "mailbox_per_message": 0.01, "relay_per_session": 0.006, "mailbox_per_session": 0.008}
CLASSES = {"rx200": {"cores": 8, "memory_gib": 8, "disk_gib": 300},
           "rx300": {"cores": 12, "memory_gib": 32, "disk_gib": 600}}


def inventory_groups(lb=2, spamcheck=2, gateway=8, mailbox=4):
    groups = {"lb": [f"lb{i}" for i in range(lb)], "spamcheck": [f"spam{i}" for i in range(spamcheck)],
              "gateway": [f"gw{i}" for i in range(gateway)], "mailbox": [f"mbox{i}" for i in range(mailbox)]}
    groups["rx200"] = groups["lb"] + groups["spamcheck"] + groups["gateway"]
    groups["rx300"] = list(groups["mailbox"])
    return groups


def plan(today=None, costs=None, classes=None, groups=None, **kwargs):
    kwargs.setdefault("gateway_ratio", "6:2")
    return capacity_plan(today or TODAY, costs or COSTS, classes or CLASSES, groups or inventory_groups(), **kwargs)


def scaled(factor):
    today = dict(TODAY)
    for key in ("messages_in_per_minute", "messages_out_per_minute", "pop_imap_sessions"):
        today[key] = TODAY[key] * factor
    return today


# --- the production example -------------------------------------------------------------

def test_production_example_carries_ten_times_today():
    result = plan(growth_factor=10)
    assert result["ok"], result["reasons"]
    assert {tier: entry["needed"] for tier, entry in result["tiers"].items()} == {
        "loadbalancer": 2, "spamcheck": 2, "gateway": 4, "mailbox": 2}
    assert result["tiers"]["gateway"]["pools_needed"] == (2, 2)
    # Little's law: 75 msg/s on one spamcheck host x 4.05 s x headroom 2 = 607.5.
    assert result["minimums"]["spamcheck_process_limit"] == pytest.approx(607.5)
    assert result["limits"]["spamcheck_process_limit"] == 610
    assert result["limits"]["postfix_gateway_process_limit"] == 100
    assert result["limits"]["postfix_gateway_clamd_max_threads"] == 12
    # The relay: 10000 sessions on one POP/IMAP gateway in high-performance mode, 8 login
    # processes (one per core) of 2500 sessions each, not 20000 processes.
    assert result["limits"]["mailbox_proxy_client_limit"] == 2500
    assert result["limits"]["mailbox_proxy_process_limit"] == 100


def test_forty_times_names_each_tier_and_the_split():
    result = plan(growth_factor=40)
    assert not result["ok"]
    assert "spamcheck tier needs 4 rx200 at 40x, inventory has 2: add 2" in result["reasons"]
    gateway = [reason for reason in result["reasons"] if reason.startswith("gateway tier")]
    assert gateway and "move the split to 3:5" in gateway[0]


def test_too_few_gateways_says_how_many_to_add():
    groups = inventory_groups(gateway=5)
    result = plan(groups=groups, gateway_ratio="3:2", growth_factor=40)
    reason = next(reason for reason in result["reasons"] if reason.startswith("gateway tier"))
    assert "needs 8 rx200 at 40x" in reason and "inventory has 5: add 3" in reason


def test_growth_factor_from_extra_vars_text():
    assert plan(growth_factor="40")["growth_factor"] == 40


def test_one_load_balancer_must_carry_everything():
    classes = copy.deepcopy(CLASSES)
    classes["rx200"]["cores"] = 1
    costs = dict(COSTS, loadbalancer_per_message=0.01)
    result = plan(classes=classes, costs=costs, groups=inventory_groups(lb=4), gateway_ratio="6:2")
    assert any("VRRP" in reason for reason in result["reasons"])


def test_the_smallest_class_of_a_tier_sizes_it():
    groups = inventory_groups()
    groups["rx300"].append("gw0")
    groups["rx200"].remove("gw0")
    assert plan(groups=groups)["tiers"]["gateway"]["hardware_class"] == "rx200"


def test_a_class_found_by_another_group():
    classes = {"lab": {"group": "all", "cores": 2, "memory_gib": 16, "disk_gib": 100}}
    groups = inventory_groups()
    groups["all"] = sorted({host for hosts in groups.values() for host in hosts})
    result = plan(classes=classes, groups=groups, redundancy=0)
    assert {entry["hardware_class"] for entry in result["tiers"].values()} == {"lab"}


# --- bad input: the key and the value are named ------------------------------------------

@pytest.mark.parametrize("key, value, words", [
    ("messages_in_per_minute", -5, "capacity_today.messages_in_per_minute must be at least 0, not -5"),
    ("message_size_kib", "big", "capacity_today.message_size_kib must be a number, not 'big'"),
    ("spam_check_share", 1.5, "capacity_today.spam_check_share must be at most 1, not 1.5"),
    ("virus_check_share", -0.1, "capacity_today.virus_check_share must be at least 0, not -0.1"),
    ("pop_imap_sessions", True, "capacity_today.pop_imap_sessions must be a number, not True"),
    ("recipients_per_message", 0.5, "capacity_today.recipients_per_message must be at least 1, not 0.5"),
    ("pop_imap_session_seconds", 0, "capacity_today.pop_imap_session_seconds must be more than 0, not 0"),
    ("mailboxes", None, "capacity_today.mailboxes must be a number, not None"),
])
def test_bad_today(key, value, words):
    with pytest.raises(AnsibleFilterError, match=words.replace(".", r"\.").replace("(", r"\(")):
        plan(today=dict(TODAY, **{key: value}))


@pytest.mark.parametrize("key", TODAY_KEYS)
def test_missing_today_key(key):
    today = {name: value for name, value in TODAY.items() if name != key}
    with pytest.raises(AnsibleFilterError, match=f"capacity_today has no {key}"):
        plan(today=today)


@pytest.mark.parametrize("key", COST_KEYS)
def test_missing_or_negative_cost(key):
    with pytest.raises(AnsibleFilterError, match=f"capacity_tier_costs has no {key}"):
        plan(costs={name: value for name, value in COSTS.items() if name != key})
    with pytest.raises(AnsibleFilterError, match=f"capacity_tier_costs.{key} must be at least 0, not -1"):
        plan(costs=dict(COSTS, **{key: -1}))


def test_unknown_keys_are_named():
    with pytest.raises(AnsibleFilterError, match="capacity_today has unknown keys: messages_per_day"):
        plan(today=dict(TODAY, messages_per_day=1))
    with pytest.raises(AnsibleFilterError, match="capacity_tuning has unknown keys: headrom"):
        plan(tuning={"headrom": 3})


def test_bad_hardware():
    with pytest.raises(AnsibleFilterError, match="capacity_hardware_classes.rx200.cores must be more than 0, not 0"):
        plan(classes=dict(CLASSES, rx200=dict(CLASSES["rx200"], cores=0)))
    with pytest.raises(AnsibleFilterError, match="capacity_hardware_classes.rx300 has no memory_gib"):
        plan(classes=dict(CLASSES, rx300={"cores": 4, "disk_gib": 1}))


def test_host_in_no_known_hardware_class():
    groups = inventory_groups()
    groups["rx400"] = groups.pop("rx300")
    with pytest.raises(AnsibleFilterError, match="host mbox0 of tier mailbox .* is in no hardware class"):
        plan(groups=groups)


@pytest.mark.parametrize("name, value, words", [
    ("growth_factor", 0, "capacity_growth_factor must be more than 0, not 0"),
    ("growth_factor", "ten", "capacity_growth_factor must be a number, not 'ten'"),
    ("target_utilisation", 1.2, "capacity_target_utilisation must be at most 1, not 1.2"),
    ("redundancy", 1.5, "capacity_redundancy must be a whole number, not 1.5"),
    ("gateway_ratio", "7:2", "lb_gateway_ratio 7:2 adds up to 9, but the inventory has 8 gateways"),
    ("gateway_ratio", "six", "lb_gateway_ratio must look like 6:2"),
])
def test_bad_settings(name, value, words):
    with pytest.raises(AnsibleFilterError, match=words.replace("(", r"\(").replace(")", r"\)")):
        plan(**{name: value})


# --- properties ---------------------------------------------------------------------------

FACTORS = st.floats(min_value=0, max_value=200, allow_nan=False)
INVENTORY = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(2, 20), st.integers(1, 10))


def _needed(result):
    return {tier: entry["needed"] for tier, entry in result["tiers"].items()}


@given(low=FACTORS, more=FACTORS, sizes=INVENTORY, redundancy=st.integers(0, 2))
def test_more_flow_never_needs_fewer_servers_nor_lower_limits(low, more, sizes, redundancy):
    lb, spamcheck, gateway, mailbox = sizes
    groups = inventory_groups(lb, spamcheck, gateway, mailbox)
    ratio = f"{gateway // 2}:{gateway - gateway // 2}"
    small = plan(today=scaled(low), groups=groups, gateway_ratio=ratio, redundancy=redundancy)
    big = plan(today=scaled(low + more), groups=groups, gateway_ratio=ratio, redundancy=redundancy)
    for tier, needed in _needed(small).items():
        assert _needed(big)[tier] is None or needed is not None and _needed(big)[tier] >= needed, tier
    for name in LIMIT_GROUPS:
        assert big["limits"][name] >= small["limits"][name], name
        assert big["minimums"][name] >= small["minimums"][name], name
    # A yes never turns into a no with less flow.
    assert small["ok"] or not big["ok"]


@given(factor=FACTORS, redundancy=st.integers(1, 3))
def test_n_plus_redundancy_means_spares_in_every_tier(factor, redundancy):
    result = plan(today=scaled(factor), redundancy=redundancy)
    for tier, needed in _needed(result).items():
        assert needed >= 1 + redundancy, tier
    smtp, pop = result["tiers"]["gateway"]["needed_split"]
    assert smtp >= 1 + redundancy and pop >= 1 + redundancy
    assert result["tiers"]["gateway"]["needed"] >= 2 * (1 + redundancy)


@given(factor=FACTORS)
def test_limits_are_whole_numbers_at_least_what_the_flow_needs(factor):
    result = plan(today=scaled(factor))
    for name, value in result["limits"].items():
        assert isinstance(value, int) and value >= 1, name
        assert value >= result["minimums"][name] or name == "spamcheck_rspamd_workers", name


@given(factor=FACTORS, growth=st.floats(min_value=0.1, max_value=50, allow_nan=False))
def test_growth_is_the_same_as_more_flow(factor, growth):
    """Growth scales flow; mailboxes too, but they size no server."""
    by_growth = plan(today=scaled(factor), growth_factor=growth)
    by_flow = plan(today=scaled(factor * growth), growth_factor=1)
    assert _needed(by_growth) == _needed(by_flow)
    assert by_growth["limits"] == by_flow["limits"]


@given(factor=FACTORS)
def test_yes_only_when_every_tier_has_what_it_needs(factor):
    result = plan(today=scaled(factor))
    enough = all(entry["needed"] is not None and entry["present"] >= entry["needed"]
                 for tier, entry in result["tiers"].items() if tier != "gateway")
    gateway = result["tiers"]["gateway"]
    smtp, pop = gateway["pools_needed"]
    enough = enough and smtp is not None and pop is not None and smtp <= 6 and pop <= 2
    assert result["ok"] == enough


# --- the verdict: inventory overrides --------------------------------------------------------

class FakeHostvars(dict):
    pass


def test_verdict_reports_an_override_below_the_flow():
    result = plan(growth_factor=40)
    groups = inventory_groups()
    hostvars = FakeHostvars({host: {} for hosts in groups.values() for host in hosts})
    for host in groups["lb"]:
        hostvars[host]["loadbalancer_maxconn"] = 50000
    verdict = capacity_verdict(result, hostvars, groups)
    assert not verdict["ok"]
    assert any(reason.startswith("loadbalancer_maxconn is 50000 in the inventory, below the 82400")
               for reason in verdict["reasons"])
    assert verdict["lines"][-1] == "Capacity at 40x: no"


def test_verdict_yes_with_overrides_above_the_flow():
    result = plan(growth_factor=10)
    groups = inventory_groups()
    hostvars = {host: {} for hosts in groups.values() for host in hosts}
    hostvars["gw3"]["postfix_gateway_process_limit"] = 150
    verdict = capacity_verdict(result, hostvars, groups)
    assert verdict["ok"], verdict["reasons"]
    assert "  postfix_gateway_process_limit = 150 (inventory; the model says 100, the flow needs " \
        in "\n".join(verdict["lines"])
    assert verdict["lines"][-1] == "Capacity at 10x: yes"


def test_verdict_refuses_a_non_number_override():
    groups = inventory_groups()
    hostvars = {host: {} for hosts in groups.values() for host in hosts}
    hostvars["mbox1"]["mailbox_process_limit"] = "lots"
    with pytest.raises(AnsibleFilterError, match="mailbox_process_limit on mbox1 must be a whole number"):
        capacity_verdict(plan(), hostvars, groups)


# --- the inventories' inputs ---------------------------------------------------------------

@pytest.mark.parametrize("inventory", ["production", "lab"])
def test_inventory_inputs_are_complete(inventory):
    data = yaml.safe_load((ROOT / "inventories" / inventory / "group_vars" / "all" / "capacity.yml").read_text())
    assert set(data["capacity_today"]) == set(TODAY_KEYS)
    assert set(data["capacity_tier_costs"]) == set(COST_KEYS)
    assert "capacity_tier_costs_measured" in data
    assert data["capacity_growth_factor"] == 10
    # The lab deploys fixed limits (its tests are tuned for them): no capacity_limits there.
    assert ("capacity_limits" in data) == (inventory == "production")
