"""Shared fixtures: the seeded `tiny` backbone (built once per session; tests must not modify it)."""
import os

import crome_runtime  # noqa: F401  before any test imports cv2: it sets OpenCV's decoder pixel limit
import pytest
from hypothesis import HealthCheck, settings

# The property tests' search: CI's derandomized `crome-ci`, or HYPOTHESIS_PROFILE=crome-long for a longer random one
settings.register_profile("crome-ci", max_examples=150, deadline=None, database=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("crome-long", max_examples=20_000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "crome-ci"))


@pytest.fixture(scope="session")
def tiny_backbone():
    from crome_edge.backbones.tiny import build_tiny

    return build_tiny(seed=0)
