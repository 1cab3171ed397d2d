"""Resolve a backbone spec (`tiny`, `tiny:SEED`, `smol`, or a local HF directory) to a CromeBackbone."""
from __future__ import annotations

from pathlib import Path

from crome_edge.backbones.base import CromeBackbone
from crome_edge.errors import CromeError

KNOWN_BACKBONES = {
    "tiny": "seeded random InstructBLIP for tests (32 px, d=64)",
    "smol": "embedded default: SmolLM2-135M-Instruct + a conveyor-trained vision tower and Q-Former",
}


def load_backbone(spec: str) -> CromeBackbone:
    if spec == "tiny" or spec.startswith("tiny:"):
        from crome_edge.backbones.tiny import build_tiny

        seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        return build_tiny(seed)
    if spec in ("smol", "smol:untrained"):
        from crome_edge.backbones.smol import load_smol

        # smol:untrained is the fresh vision side that pretraining starts from (--backbone-parts)
        return load_smol(require_trained=spec == "smol")
    path = Path(spec).expanduser()
    if path.is_dir():
        from crome_edge.backbones.hf_dir import load_hf_dir

        return load_hf_dir(path)
    known = ", ".join(f"{name} ({what})" for name, what in KNOWN_BACKBONES.items())
    raise CromeError(f"unknown backbone {spec!r}: not a known name or a directory. Known: {known}")


def load_backbone_named_by(source: str, name: str) -> CromeBackbone:
    """The backbone an adapter file (or another untrusted file) names as its own: a registered name only. A file
    must not choose which directory's weights and config get loaded; a local directory needs the user's own
    --backbone."""
    registered = name in KNOWN_BACKBONES or (name.startswith("tiny:") and name[5:].isdigit())
    if not registered:
        raise CromeError(
            f"{source} names backbone {name!r}, which is not a registered name ({', '.join(KNOWN_BACKBONES)}); an "
            f"adapter file does not choose what gets loaded. If that is your local backbone directory, pass "
            f"--backbone {name!r} yourself"
        )
    return load_backbone(name)

