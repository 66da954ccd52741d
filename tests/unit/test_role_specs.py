"""Each role's argument spec against its defaults/main.yml, and the docs generated from it.

The spec (`meta/argument_specs.yml`, entry point `main`) is what docs/roles shows, so it
must say what the role really does: every default it states equals the one in
defaults/main.yml (YAML values as loaded, types included: `1` is not `true`, `"25"` is
not `25`), and the two files name the same variables. Where the role default of a dict
option is written out, each suboption default the spec states must match it too.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from role_docs import main_entry_point

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p.parent.parent.name for p in ROOT.glob("roles/*/meta/argument_specs.yml") if main_entry_point(p))


def spec_options(role):
    return main_entry_point(ROOT / "roles" / role / "meta" / "argument_specs.yml").get("options") or {}


def role_defaults(role):
    path = ROOT / "roles" / role / "defaults" / "main.yml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def same(a, b):
    """Equal as YAML values: same types all the way down (Python has True == 1 == 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def show(value):
    return json.dumps(value, ensure_ascii=False)


def templated(value):
    return "{{" in show(value) or "{%" in show(value)


def suboption_problems(name, options, value):
    """Suboption defaults of a dict option against the role default's value."""
    problems = []
    if not isinstance(value, dict) or templated(value):
        return problems
    for sub, option in options.items():
        option = option or {}
        if "default" in option:
            if sub not in value:
                problems.append(f"{name}.{sub}: spec default {show(option['default'])}, "
                                f"but the role default of {name} has no {sub!r}")
            elif not same(option["default"], value[sub]):
                problems.append(f"{name}.{sub}: spec default {show(option['default'])} "
                                f"!= defaults/main.yml {show(value[sub])}")
        if option.get("type") == "dict" and "options" in option and sub in value:
            problems += suboption_problems(f"{name}.{sub}", option["options"], value[sub])
    return problems


@pytest.mark.parametrize("role", ROLES)
def test_spec_defaults_equal_the_role_defaults(role):
    defaults = role_defaults(role)
    problems = []
    for name, option in spec_options(role).items():
        option = option or {}
        if "default" in option and name in defaults and not same(option["default"], defaults[name]):
            problems.append(f"{name}: spec default {show(option['default'])} "
                            f"!= defaults/main.yml {show(defaults[name])}")
        if option.get("type") == "dict" and "options" in option and name in defaults:
            problems += suboption_problems(name, option["options"], defaults[name])
    assert not problems, (f"role {role}: roles/{role}/meta/argument_specs.yml disagrees with "
                          f"roles/{role}/defaults/main.yml:\n  " + "\n  ".join(problems))


@pytest.mark.parametrize("role", ROLES)
def test_spec_and_defaults_name_the_same_variables(role):
    options, defaults = set(spec_options(role)), set(role_defaults(role))
    problems = [f"{name}: in defaults/main.yml, not in meta/argument_specs.yml" for name in sorted(defaults - options)]
    problems += [f"{name}: in meta/argument_specs.yml, not in defaults/main.yml" for name in sorted(options - defaults)]
    assert not problems, f"role {role}:\n  " + "\n  ".join(problems)


def test_the_role_docs_are_current():
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "role_docs.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        pytest.fail(f"{result.stderr}\n{result.stdout}", pytrace=False)
