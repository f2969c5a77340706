"""How a path the user gave is named when it is not there: relative paths in configs and on the
command line are read from the working directory, so the message says which one (the usual
cause is a command run from another folder than the one the config's paths assume)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def where(path: str | Path) -> str:
    """``""`` for an absolute path or a URI, else `` (relative to the working directory DIR)``."""
    text = str(path)
    if "://" in text or os.path.isabs(text):
        return ""
    return f" (relative to the working directory {os.getcwd()})"


def not_found(what: str, path: str | Path) -> FileNotFoundError | IsADirectoryError:
    """The error for a file that is not there: ``FileNotFoundError("<what> not found: <path>[
    (relative to the working directory DIR)]")``, or, when ``path`` is a folder,
    ``IsADirectoryError("<what> is a folder, not a file: <path>")``."""
    if Path(path).is_dir():
        return IsADirectoryError(f"{what} is a folder, not a file: {path}{where(path)}")
    return FileNotFoundError(f"{what} not found: {path}{where(path)}")


def without_credentials(text: str) -> str:
    """A URI as written in outputs, logs and errors: without the ``KEY:SECRET@`` that pyarrow
    accepts in it (``s3://KEY:SECRET@bucket/dir?endpoint_override=...``); anything else as it is."""
    if "://" not in text:
        return text
    parts = urlsplit(text)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1])) if "@" in parts.netloc else text
