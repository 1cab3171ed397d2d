"""crome_edge's name for the one error root, `crome_runtime.errors.CromeError` (one class: an `except` for either
name catches every crome-edge error, the runtime's included)."""
from crome_runtime.errors import CromeError

__all__ = ["CromeError"]
