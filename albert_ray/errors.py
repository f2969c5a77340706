"""How errors reach the user: which ones are the user's to fix, and their one line."""

from __future__ import annotations

# The input or the config is wrong (every project error class derives from ValueError): the same
# run fails the same way again, so these are never retried, and the command line prints them as
# one line instead of a traceback.
USER_ERRORS = (ValueError, FileNotFoundError)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name if it has none)."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text.strip().splitlines()[0]
