"""The one error root: every crome-edge exception derives from `CromeError`. A leaf module: it imports nothing,
so a command line, a loader or the server can catch project errors without loading cv2, onnxruntime or torch.

An error carries what its catchers need, so each catches `CromeError` once, with no table of types:
- `str(error)`: what is wrong and how to fix it, in one line (the CLI prints it as `crome-edge CMD: error: ...`);
- `exit_code`: the command's exit status (2, as for a bad command line);
- `http_status`, `http_code`, `http_param`, `retry_after_s`: the server's answer (serve/app.py), in OpenAI's
  error shape. 500 means the server's own failure: the client is told only that the log has it;
- `hint`: an optional next step, shown after the message.
A subclass that callers also catch as ValueError, ImportError or OSError keeps that as a second base.

Each module defines its own subclasses beside the code that raises them (BundleError: manifest.py, ImageError:
preprocess.py, CoreError: ccore.py, ...); the engine's are here, because the engine, the providers and the
server's worker share them.
"""
from __future__ import annotations


class CromeError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""

    exit_code: int = 2
    http_status: int = 500
    http_code: str | None = None
    http_param: str | None = None
    retry_after_s: int | None = None

    def __init__(self, *args: object, hint: str | None = None):
        super().__init__(*args)
        self.hint = hint

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message}; {self.hint}" if self.hint else message


class EngineError(CromeError, ValueError):
    """A request the engine cannot serve as asked (the message says what to change)."""

    http_status = 400


class ProviderError(EngineError):
    """The requested execution provider is not available here, or ONNX Runtime fell back from it."""


class PromptTooLong(EngineError):
    """The visual queries plus the prompt do not fit the decoder's context."""

    http_code, http_param = "context_length_exceeded", "messages"


__all__ = ["CromeError", "EngineError", "PromptTooLong", "ProviderError"]
