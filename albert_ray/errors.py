"""How errors reach the user: which ones are the user's to fix, and their one line."""

from __future__ import annotations

import re

# The input or the config is wrong (every project error class derives from ValueError), or a path
# names something that is missing, unreadable, or a folder where a file is meant: the same run
# fails the same way again, so these are never retried, and the command line prints them as one
# line instead of a traceback. Other OSErrors (a network or object-store hiccup) may pass.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class InputUnreadable(OSError):
    """An input file a read task could not open or read: an object store that refused it, or a
    network failure that outlived Ray Data's retries. One line naming the file, like a user
    error, but not one: it may pass, so it is not in ``USER_ERRORS`` (Ray Train may retry it)."""


class EnvironmentFault(OSError):
    """A fault of the environment a cluster meets — a full disk or bucket quota, a store that
    refuses or times out, a node or actor that disappeared beyond Ray's retries: one line naming
    what failed and saying that the same command resumes (exit code 1, not a user error)."""


ONE_LINE = USER_ERRORS + (InputUnreadable, EnvironmentFault)  # printed as one line, not a traceback

_NO_SPACE = (28, 122)  # ENOSPC, EDQUOT
_NO_SPACE_LINE = re.compile(r"[^\n]*(No space left on device|Disk quota exceeded|QuotaExceeded)[^\n]*")
# pyarrow's object-store errors: "When uploading part for key 'x' in bucket 'b': AWS Error SLOW_DOWN ..."
_STORE_LINE = re.compile(r"[^\n]*(AWS Error [A-Z_]+|google::cloud::Status|Curl error)[^\n]*")
_LOST = (
    "ActorDiedError",
    "RayActorError",
    "ActorUnavailableError",
    "NodeDiedError",
    "ObjectLostError",
    "OwnerDiedError",
    "WorkerCrashedError",
    "ObjectReconstructionFailedError",
    "WorkerHealthCheckFailedError",
    "WorkerHealthCheckTimeoutError",
)  # Ray Train's names for a dead worker


def lost_worker(exc: BaseException | None) -> bool:
    """A Ray Train worker-group failure in which every failed worker was lost (its process or
    node died), not one that raised: the driver says so in one line and starts again."""
    failures = getattr(exc, "worker_failures", None)
    if not failures:
        return False
    return all(type(getattr(e, "_base_exc", e)).__name__ in _LOST for e in failures.values())


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it wraps: Ray's ``cause``, Python's ``__cause__`` / ``__context__``."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return seen


def environment_fault(exc: BaseException, where: str, resume: str) -> EnvironmentFault | None:
    """The one line for a fault of the environment found anywhere in ``exc``'s chain, else None.
    A remote error reaches the driver as Ray's wrapper whose text holds the remote traceback (the
    chain itself does not cross processes), so the text is searched too.

    Args:
        where: what was being written or run (``output s3://bucket/labels``).
        resume: what is kept and how to resume (``12 of 40 units are committed: ...``).
    """
    for e in causes(exc):
        if getattr(e, "errno", None) in _NO_SPACE:
            return EnvironmentFault(
                f"{where}: no space left on the device or quota ({first_line(e)}); {resume}"
            )
        found = _NO_SPACE_LINE.search(str(e))
        if found:
            return EnvironmentFault(
                f"{where}: no space left on the device or quota ({found.group(0).strip()}); {resume}"
            )
        found = _STORE_LINE.search(str(e))
        if found:
            line = re.sub(r"^(\w+(Error|Exception): )+", "", found.group(0).strip())
            return EnvironmentFault(f"{where}: the store refused or timed out ({line}); {resume}")
        if type(e).__name__ in _LOST or lost_worker(e):
            failures = getattr(e, "worker_failures", None)
            kind = (
                type(getattr(failures[min(failures)], "_base_exc", failures[min(failures)]))
                if failures
                else type(e)
            )
            return EnvironmentFault(
                f"{where}: a node or Ray worker was lost beyond Ray's retries ({kind.__name__}); {resume}"
            )
    return None


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
