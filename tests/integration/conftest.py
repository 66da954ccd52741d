"""Integration tests run against a live lab (CI's molecule lab or `make lab`).

Hosts come from the lab inventory; commands run in the containers through podman.
"""

import sys
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lab_inventory  # noqa: E402


@pytest.fixture(scope="session")
def lab():
    return lab_inventory.load()


@pytest.fixture(scope="session")
def lab_host(lab):
    """lab_host('gw1') -> a testinfra host inside that container."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = testinfra.get_host("podman://" + lab["hosts"][name]["ansible_host"])
        return cache[name]

    return get


@pytest.fixture(scope="session", autouse=True)
def slots_at_home(lab, lab_host):
    """Every mailbox server holds its home slots before the first test. A take-over before
    the suite (a converge on a CPU-starved host can cost a server its lease: the fence stops
    its Dovecot and the gateways move its slots) would fail every test that expects a user
    on the server the directory names."""
    from test_takeover import all_at_home, held_slots  # a test module's helpers
    print("slots held before the suite:", {s: len(held_slots(lab, lab_host, s)) for s in lab["groups"]["mailbox"]})
    all_at_home(lab, lab_host)


def pytest_generate_tests(metafunc):
    """`lab_hostname` runs a test once per lab host; `@pytest.mark.group('x')` narrows it."""
    if "lab_hostname" in metafunc.fixturenames:
        lab = lab_inventory.load()
        marker = metafunc.definition.get_closest_marker("group")
        names = lab["groups"][marker.args[0]] if marker else lab["groups"]["all"]
        metafunc.parametrize("lab_hostname", sorted(names))


def pytest_collection_modifyitems(items):
    """The resilience pass last: it stops daemons and containers (and repairs them), so no
    other test runs on a lab that is still coming back."""
    items.sort(key=lambda item: item.module.__name__.endswith("test_faults_under_load"))


def pytest_configure(config):
    config.addinivalue_line("markers", "group(name): run the test once per host of this inventory group")
