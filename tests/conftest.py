"""Make the repository root importable, so the tests run the same code with or without `pip install -e .`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
