"""The lab image's package list is read from the roles (lab/image_packages.py): what a role
installs is preinstalled, except what a host preseeds with its own values."""

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("image_packages", ROOT / "lab" / "image_packages.py")
image_packages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_packages)


def make_role(roles, name, tasks, variables=None):
    (roles / name / "tasks").mkdir(parents=True)
    (roles / name / "tasks" / "main.yml").write_text(yaml.safe_dump(tasks))
    if variables is not None:
        (roles / name / "vars").mkdir()
        (roles / name / "vars" / "Debian.yml").write_text(yaml.safe_dump(variables))


def test_the_platform_roles_packages_are_in_the_image_but_not_host_preseeded_or_lab_only_ones():
    spec = image_packages.image_spec()
    packages = set(spec["packages"])
    # Gateways, spam check, mailbox servers, load balancer, monitoring, every host.
    assert {"postfix", "clamav-daemon", "rspamd", "dovecot-lmtpd", "haproxy", "prometheus", "rsyslog"} <= packages
    # slapd's domain and Roundcube's database are each host's own debconf answers.
    assert not {"slapd", "roundcube-core", "roundcube-sqlite3"} & packages
    # lab_legacy's Courier is no platform package.
    assert "courier-imap" not in packages
    assert "postfix postfix/main_mailer_type select No configuration" in spec["debconf"]
    # postfix_gateway answers clamav-daemon after installing it: a new host's first install
    # writes the package's own clamd.conf and unit drop-in, and so does the image's.
    assert not [answer for answer in spec["debconf"] if answer.startswith("clamav-daemon ")]
    assert "rsyslog" in spec["every_host"] and "postfix" not in spec["every_host"]


def test_lists_from_vars_sums_blocks_and_dict_choices_are_read(tmp_path):
    make_role(
        tmp_path,
        "web",
        [
            {"name": "Packages", "block": [{"name": "Install", "ansible.builtin.apt": {"name": "{{ __web_a + __web_db[web_db.type] }}"}}]},
            {"name": "One", "ansible.builtin.package": {"name": "rsync"}},
            {"name": "Own", "ansible.builtin.apt": {"name": "{{ web_packages }}"}},
        ],
        {"__web_a": ["nginx"], "__web_db": {"sqlite": ["db-sqlite"], "pgsql": ["db-pgsql"]}},
    )
    assert image_packages.image_spec(tmp_path)["packages"] == ["db-pgsql", "db-sqlite", "nginx", "rsync"]


def test_a_task_preseeding_host_values_keeps_its_packages_out_and_constant_answers_go_in(tmp_path):
    make_role(
        tmp_path,
        "dir",
        [
            {"name": "Preseed", "ansible.builtin.debconf": {"name": "slapd", "question": "slapd/domain", "vtype": "string", "value": "{{ domain }}"}},
            {"name": "Install", "ansible.builtin.apt": {"name": ["slapd", "ldap-utils"]}},
            {"name": "Mailer", "ansible.builtin.debconf": {"name": "postfix", "question": "postfix/main_mailer_type", "vtype": "select", "value": "No configuration"}},
            {"name": "Postfix", "ansible.builtin.apt": {"name": "postfix"}},
            {"name": "Later", "ansible.builtin.debconf": {"name": "postfix", "question": "postfix/x", "vtype": "boolean", "value": False}},
        ],
    )
    spec = image_packages.image_spec(tmp_path)
    assert spec["packages"] == ["postfix"]
    assert spec["debconf"] == ["postfix postfix/main_mailer_type select No configuration"]


def test_an_unreadable_package_list_is_named_not_skipped(tmp_path):
    make_role(tmp_path, "odd", [{"name": "Install the odd ones", "ansible.builtin.apt": {"name": "{{ __odd | select('x') }}"}}], {"__odd": ["a"]})
    with pytest.raises(image_packages.Unreadable, match="odd/tasks/main.yml: Install the odd ones"):
        image_packages.image_spec(tmp_path)


def test_another_package_gives_another_image_tag(tmp_path):
    make_role(tmp_path, "one", [{"name": "Install", "ansible.builtin.apt": {"name": "postfix"}}])
    first = image_packages.image_spec(tmp_path)["tag"]
    (tmp_path / "one" / "tasks" / "main.yml").write_text(yaml.safe_dump([{"name": "Install", "ansible.builtin.apt": {"name": ["postfix", "rsync"]}}]))
    assert image_packages.image_spec(tmp_path)["tag"] != first


def test_another_recipe_gives_another_image_tag(tmp_path):
    """An image made another way (lab/build-image.sh) is another image: the old one is not reused."""
    make_role(tmp_path / "roles", "one", [{"name": "Install", "ansible.builtin.apt": {"name": "postfix"}}])
    recipe = tmp_path / "build-image.sh"
    recipe.write_text("apt-get install\n")
    first = image_packages.image_spec(tmp_path / "roles", recipe)["tag"]
    recipe.write_text("apt-get install\nupdate-rc.d clamav-milter disable\n")
    assert image_packages.image_spec(tmp_path / "roles", recipe)["tag"] != first
