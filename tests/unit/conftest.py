import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
for folder in ("filter_plugins", "library", "module_utils"):
    sys.path.insert(0, str(ROOT / folder))
