"""The runtime's error types: each message names the problem and the fix. Torch-free.

Callers (the CLI, the server) catch `RUNTIME_ERRORS` and show the message without a traceback. Errors
that other runtime modules already define are re-exported here so there is one place to catch them:
BundleError (manifest.py: a missing, altered or newer-format bundle), ImageError (preprocess.py: an
unreadable, empty or oversized image), CoreError / CoreUnavailable (ccore.py: the C core).
"""
from __future__ import annotations

from crome_runtime.ccore import CoreError, CoreUnavailable
from crome_runtime.manifest import BundleError
from crome_runtime.preprocess import ImageError


class EngineError(ValueError):
    """A request the engine cannot serve as asked (the message says what to change)."""


class ProviderError(EngineError):
    """The requested execution provider is not available here, or ONNX Runtime fell back from it."""


class PromptTooLong(EngineError):
    """The visual queries plus the prompt do not fit the decoder's context."""


RUNTIME_ERRORS = (BundleError, ImageError, EngineError, CoreError, CoreUnavailable)

__all__ = ["BundleError", "CoreError", "CoreUnavailable", "EngineError", "ImageError", "PromptTooLong",
           "ProviderError", "RUNTIME_ERRORS"]
