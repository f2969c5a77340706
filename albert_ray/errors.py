"""How errors reach the user: which ones are the user's to fix, and their one line."""

from __future__ import annotations

# The input or the config is wrong (every project error class derives from ValueError), or a path
# names something that is missing, unreadable, or a folder where a file is meant: the same run
# fails the same way again, so these are never retried, and the command line prints them as one
# line instead of a traceback. Other OSErrors (a network or object-store hiccup) may pass.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class InputUnreadable(OSError):
    """An input file a read task could not open or read: an object store that refused it, or a
    network failure that outlived Ray Data's retries. One line naming the file, like a user
    error, but not one: it may pass, so it is not in ``USER_ERRORS`` (Ray Train may retry it)."""


ONE_LINE = USER_ERRORS + (InputUnreadable,)  # what the command line prints as one line, not a traceback


def unwrapped(exc: BaseException) -> BaseException:
    """A user error (or :class:`InputUnreadable`) raised inside a Ray task or actor, without Ray's
    wrapper (``RayTaskError``, whose text holds the remote traceback): its cause; any other error
    as it is."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, ONE_LINE) else exc


def one_line(text: str) -> str:
    """A library's message as one printable line: its lines joined by ``; ``, control characters
    escaped (a decoder's message may quote the byte it choked on)."""
    lines = (line.strip() for line in str(text).splitlines())
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in "; ".join(x for x in lines if x))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name if it has none)."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text.strip().splitlines()[0]


def worker_user_error(exc: BaseException | None) -> BaseException | None:
    """The first user error (by worker rank) in a Ray Train worker-group failure, or ``exc``
    itself if it is one; else None. On Ray Train's controller a worker's error is still wrapped
    with its traceback text (``UserExceptionWithTraceback._base_exc``)."""
    failures = getattr(exc, "worker_failures", None)
    for err in [failures[rank] for rank in sorted(failures)] if failures else [exc]:
        err = getattr(err, "_base_exc", err)
        if isinstance(err, USER_ERRORS):
            return err
    return None
