"""The test suite: a package, so that test modules import their shared helpers as `tests.support.*` and never
from one another (tests/test_layout.py checks it)."""
