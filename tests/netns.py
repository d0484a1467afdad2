"""The live tests' namespaces: ``sensor/testbed.py`` (shared with the live benchmark)."""
from sensor.testbed import Link, why_not_runnable  # noqa: F401
