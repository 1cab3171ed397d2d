"""Package data: the smol vision side and the line3 and line5 demo adapters (see crome_edge/recipes/README.md).

`resolve_adapter` is how every command's adapter argument (`ask/eval/export --adapter`, `info`) is read:
an existing path as given, else the name of a shipped adapter (`line3`, `line5`).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from crome_edge.errors import CromeError

SHIPPED_ADAPTERS = {"line3": "line3.safetensors", "line5": "line5.safetensors"}  # name -> file in this package


def weights_dir() -> Path:
    return Path(str(resources.files("crome_edge") / "weights"))


def shipped_adapter(name: str) -> Path:
    path = weights_dir() / SHIPPED_ADAPTERS[name]
    if not path.is_file():
        raise CromeError(f"the shipped {name} adapter is missing from this install ({path}); reinstall crome-edge")
    return path


def resolve_adapter(value: str | Path) -> Path:
    """An adapter argument -> a path: the path itself when something is there, else a shipped adapter by name,
    else the path unchanged (the loader then says it does not exist and names the shipped adapters)."""
    path = Path(value).expanduser()
    if path.exists() or str(value) not in SHIPPED_ADAPTERS:
        return path
    return shipped_adapter(str(value))


def is_shipped(path: Path) -> bool:
    """Whether `path` is inside the installed package's weights (no place to write a bundle next to)."""
    return Path(path).absolute().parent == weights_dir().absolute()
