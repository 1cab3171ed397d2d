"""Frozen backbones: vision tower -> Q-Former -> projection -> decoder LLM (docs/architecture.md §3)."""
from crome_edge.backbones.base import BackboneInfo, CromeBackbone
from crome_edge.backbones.registry import load_backbone

__all__ = ["BackboneInfo", "CromeBackbone", "load_backbone"]
