import os
import pathlib
import sys
import time

import pytest

os.environ["TZ"] = "UTC"
time.tzset()

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent
PCAPS = ROOT / "pcaps"
sys.path.insert(0, str(TESTS))   # `import naive`


@pytest.fixture
def pcaps_dir():
    return PCAPS


def shipped(name):
    """Path of a shipped capture; skips the test if it is absent."""
    path = PCAPS / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path
