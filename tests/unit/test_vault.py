"""Production secrets: one vault_* variable each, all of them listed in
inventories/production/group_vars/all/vault.yml.example (docs/secrets.md), none of them
written in the inventory itself, and nothing committed that should be encrypted and is not."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ROOT / "inventories" / "production"
EXAMPLE = PRODUCTION / "group_vars" / "all" / "vault.yml.example"
# Where a vault_* name may be read: the production inventory, the roles, the playbooks.
SEARCHED = [PRODUCTION, ROOT / "roles", ROOT / "playbooks"]
VAULT_NAME = re.compile(r"(?<![\w.])vault_[a-z0-9_]+")
SECRET_NAME = re.compile(r"password|passwd|secret|des_key|_pw$")
FROM_VAULT = re.compile(r"^\{\{\s*vault_[a-z0-9_]+\s*\}\}$")
VAULT_HEADER = "$ANSIBLE_VAULT;"


def referenced():
    """{vault name: [files that read it]} outside the example and the vault itself."""
    names = {}
    for top in SEARCHED:
        for path in sorted(p for p in top.rglob("*") if p.is_file()):
            if path.name in (EXAMPLE.name, "vault.yml"):
                continue
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue
            for name in VAULT_NAME.findall(text):
                names.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return names


def listed():
    return yaml.safe_load(EXAMPLE.read_text()) or {}


def test_the_example_lists_every_vault_variable_in_use():
    missing = {name: files for name, files in referenced().items() if name not in listed()}
    assert not missing, f"vault variables read but not listed in {EXAMPLE.relative_to(ROOT)}: {missing}"


def test_the_example_lists_only_vault_variables_in_use():
    unused = sorted(set(listed()) - set(referenced()))
    assert not unused, (f"listed in {EXAMPLE.relative_to(ROOT)} but read nowhere in the production inventory, "
                        f"roles or playbooks (remove them): {unused}")


def test_the_example_holds_names_only():
    entries = listed()
    assert entries, "the example lists no variable"
    assert all(VAULT_NAME.fullmatch(name) for name in entries), sorted(entries)
    assert all(value == "" for value in entries.values()), "the example must not carry values"


def test_each_example_entry_says_what_it_is_and_how_to_make_it():
    lines = EXAMPLE.read_text().splitlines()
    bare = [line.split(":")[0] for number, line in enumerate(lines)
            if line.startswith("vault_") and not (number and lines[number - 1].startswith("# "))]
    assert not bare, f"entries without a comment line above them: {bare}"


def _literal_secrets(node, path, secret=False):
    """Where a secret-named value (or anything under one) is not a vault_* reference."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _literal_secrets(value, f"{path}.{key}", secret or bool(SECRET_NAME.search(str(key))))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _literal_secrets(value, f"{path}[{index}]", secret)
    elif secret and not (isinstance(node, str) and FROM_VAULT.match(node)):
        yield path


def test_the_production_inventory_reads_its_secrets_from_the_vault():
    problems = []
    for path in sorted(PRODUCTION.rglob("*.yml")):
        if path.name == "vault.yml":
            continue
        problems += _literal_secrets(yaml.safe_load(path.read_text()), str(path.relative_to(ROOT)))
    assert not problems, f"secrets written in the inventory instead of '{{{{ vault_... }}}}': {problems}"


def _tracked():
    try:
        done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in done.stdout.decode().split("\0") if name]


def test_committed_vaults_and_private_keys_are_encrypted():
    must_be_encrypted = [p for p in _tracked() if p.name == "vault.yml" or p.suffix in (".key", ".p12", ".pfx")]
    plain = [str(p.relative_to(ROOT)) for p in must_be_encrypted
             if p.exists() and not p.read_bytes().startswith(VAULT_HEADER.encode())]
    assert not plain, f"committed unencrypted (ansible-vault encrypt them, then rewrite history): {plain}"


def test_no_vault_password_file_is_committed():
    pattern = re.compile(r"(^|[./])vault[-_]pass", re.IGNORECASE)
    found = [str(p.relative_to(ROOT)) for p in _tracked() if pattern.search(p.name)]
    assert not found, f"vault password files belong outside the repository: {found}"
