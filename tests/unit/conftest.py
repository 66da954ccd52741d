import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))  # role_docs: which entry point of a role's spec is documented
for folder in ("filter_plugins", "library", "module_utils"):
    sys.path.insert(0, str(ROOT / folder))
# Role common installs its shared modules next to the scripts that import them.
sys.path.insert(0, str(ROOT / "roles" / "common" / "files"))

# Property tests (hypothesis): deterministic, no example database, no deadlines (a slow
# machine must not fail them); the examples are few enough for `pytest tests/unit`.
settings.register_profile("unit", max_examples=150, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("unit")
