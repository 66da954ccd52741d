"""Every module's DOCUMENTATION, EXAMPLES and RETURN parse as YAML (ansible-doc and the
argument checks read them; a stray ': ' in a description breaks them silently)."""

import ast
from pathlib import Path

import pytest
import yaml

LIBRARY = Path(__file__).resolve().parent.parent.parent / "library"


def doc_strings(path):
    tree = ast.parse(path.read_text())
    return {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name) and target.id in ("DOCUMENTATION", "EXAMPLES", "RETURN")}


@pytest.mark.parametrize("path", sorted(LIBRARY.glob("*.py")), ids=lambda p: p.stem)
def test_module_documentation_is_yaml(path):
    docs = doc_strings(path)
    assert set(docs) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}
    for name, text in docs.items():
        assert yaml.safe_load(text) is not None, name
    assert yaml.safe_load(docs["DOCUMENTATION"])["module"] == path.stem
