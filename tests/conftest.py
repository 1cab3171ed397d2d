"""Shared fixtures: the seeded `tiny` backbone (built once per session; tests must not modify it)."""
import crome_runtime  # noqa: F401  before any test imports cv2: it sets OpenCV's decoder pixel limit
import pytest


@pytest.fixture(scope="session")
def tiny_backbone():
    from crome_edge.backbones.tiny import build_tiny

    return build_tiny(seed=0)
