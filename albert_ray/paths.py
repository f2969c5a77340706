"""Where an artifact lives and how it is named: a local path or any URI pyarrow opens
(``s3://``, ``gs://``, ``hdfs://``...).  The one owner of opening, joining, copying and showing
locations; the model directory's layout is :mod:`albert_ray.modeldir`'s.

Relative paths in configs and on the command line are read from the working directory, so a
message about a missing one says which (the usual cause is a command run from another folder
than the one the config's paths assume).  Credentials written into a URI
(``s3://KEY:SECRET@bucket/...``) never reach a log, an error or a file: :func:`without_credentials`.  The
standard chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_ENDPOINT_URL`` /
``AWS_REGION``, config files, instance and pod roles) is what a cluster should use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs


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
    if not is_uri(path) and Path(path).is_dir():
        return IsADirectoryError(f"{what} is a folder, not a file: {path}{where(path)}")
    return FileNotFoundError(f"{what} not found: {shown(path)}{where(path)}")


def without_credentials(text: str | Path) -> str:
    """A URI as written in outputs, logs and errors: without the ``KEY:SECRET@`` that pyarrow
    accepts in it (``s3://KEY:SECRET@bucket/dir?endpoint_override=...``); anything else as it is."""
    text = str(text)
    if "://" not in text:
        return text
    parts = urlsplit(text)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1])) if "@" in parts.netloc else text


def shown(location: str | Path) -> str:
    """A location as messages and records name it: a URI without credentials and without its
    ``?options`` (``s3://bucket/dir/file``); a local path as it is."""
    if not is_uri(location):
        return str(location)
    parts = urlsplit(str(location))
    return without_credentials(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


def scrub(value):
    """``value`` (a config or summary: dicts, lists, strings) with every URI :func:`without_credentials`: what a
    file the project writes may hold (``job.json``, ``pretrain.json``, ``export.json``)."""
    if isinstance(value, str):
        return without_credentials(value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def fs_and_path(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a local path or URI, and the path inside it."""
    if is_uri(uri):
        return pafs.FileSystem.from_uri(str(uri))
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(location: str | Path, *parts: str) -> str:
    """``location/part/...``; a URI keeps its query (``?endpoint_override=...``) at the end."""
    text = str(location)
    if not is_uri(text):
        return str(Path(text, *parts))
    split = urlsplit(text)
    return urlunsplit(split._replace(path="/".join([split.path.rstrip("/"), *parts])))


def ray_storage(storage_path: str | None, output_dir: str) -> str:
    """Ray Train's storage of a job: ``storage_path``, else ``<output_dir>/ray`` (absolute when local)."""
    if storage_path:
        return storage_path
    return join(output_dir, "ray") if is_uri(output_dir) else str(Path(output_dir, "ray").resolve())


def is_file(location: str | Path) -> bool:
    """Whether a file is at ``location`` (a local path or a URI)."""
    if not is_uri(location):
        return Path(location).is_file()
    fs, path = fs_and_path(str(location))
    return fs.get_file_info(path).type == pafs.FileType.File


def exists(location: str | Path) -> bool:
    fs, path = fs_and_path(str(location))
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def files_under(location: str | Path) -> dict[str, int]:
    """``{relative path: bytes}`` of every file under a folder (empty when it is not there)."""
    fs, root = fs_and_path(str(location))
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    base = root.rstrip("/") + "/"
    return {i.path[len(base) :]: i.size for i in infos if i.type == pafs.FileType.File}


def publish_dir(local: str | Path, location: str | Path) -> None:
    """Make ``location`` hold exactly the files of the local folder ``local`` (what was there
    before goes first). A no-op when both are the same local folder."""
    if not is_uri(location) and Path(local).resolve() == Path(location).resolve():
        return
    fs, path = fs_and_path(str(location))
    fs.delete_dir_contents(path, missing_dir_ok=True)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(
        str(Path(local).resolve()), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )


def fetch_dir(location: str | Path, local: str | Path, names: tuple[str, ...] | None = None) -> list[str]:
    """Copy the files under ``location`` (only ``names`` when given) into the local folder
    ``local``; the relative paths copied."""
    fs, root = fs_and_path(str(location))
    wanted = sorted(files_under(location) if names is None else names)
    for rel in wanted:
        target = Path(local, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            f"{root.rstrip('/')}/{rel}",
            str(target),
            source_filesystem=fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )
    return wanted


def cache_root() -> Path:
    """Where folders fetched from URIs are kept on this node: ``$ALBERT_RAY_CACHE`` or
    ``~/.cache/albert_ray``."""
    return Path(os.environ.get("ALBERT_RAY_CACHE") or Path.home() / ".cache" / "albert_ray")


def local_file(location: str | Path) -> Path:
    """A local path holding the file at ``location``: the path itself when local; for a URI, a
    copy in :func:`cache_root` fetched on this node, again only when the file's size or time
    changed. Every node that reads the file calls this itself.

    Raises:
        FileNotFoundError: nothing at the URI. IsADirectoryError: a folder there.
        OSError: the store refuses to serve it.
    """
    if not is_uri(location):
        return Path(location)
    fs, path = fs_and_path(str(location))
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"file not found: {shown(location)}")
    if info.type != pafs.FileType.File:
        raise IsADirectoryError(f"a folder, not a file: {shown(location)}")
    key = without_credentials(location)  # the store's options (endpoint) too: another store, another copy
    folder = cache_root() / "files" / hashlib.sha256(key.encode()).hexdigest()[:20]
    cached, stamp = folder / PurePosixPath(path).name, folder / ".stamp.json"
    version = {"size": info.size, "mtime_ns": info.mtime_ns}
    if cached.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == version:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{cached.name}.{os.getpid()}.part"
    pafs.copy_files(path, str(part), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    os.replace(part, cached)
    stamp.write_text(json.dumps(version))
    return cached


def local_folder(location: str | Path) -> Path:
    """A local folder holding the files of the folder at ``location`` (not its subfolders): the
    folder itself for a local path; for a URI, a copy in :func:`cache_root` fetched on this node,
    again only when the listing (names and sizes) changed.  Every node that needs the folder
    calls this itself, so no node depends on another's disk.

    Raises:
        FileNotFoundError: nothing at the URI.
        OSError: the store refuses to list or serve it.
    """
    if not is_uri(location):
        return Path(location)
    listing = {name: size for name, size in files_under(location).items() if "/" not in name}
    if not listing:
        raise FileNotFoundError(f"folder not found: {without_credentials(location)}")
    cache = cache_root() / hashlib.sha256(without_credentials(location).encode()).hexdigest()[:20]
    stamp = cache / ".listing.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == listing:
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache.parent))
    try:
        fetch_dir(location, staging, tuple(listing))
        (staging / ".listing.json").write_text(json.dumps(listing, sort_keys=True))
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(staging, cache)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache
