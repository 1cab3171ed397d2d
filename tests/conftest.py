"""Shared fixtures: the seeded `tiny` backbone (built once per session; tests must not modify it)."""
import pytest


@pytest.fixture(scope="session")
def tiny_backbone():
    from crome_edge.backbones.tiny import build_tiny

    return build_tiny(seed=0)
