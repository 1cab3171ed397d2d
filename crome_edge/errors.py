"""The one exception type the CLI turns into a clear message and a non-zero exit (no traceback)."""


class CromeError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""
