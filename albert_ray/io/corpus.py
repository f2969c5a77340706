"""Reading corpora for bulk jobs: inputs -> units -> validated rows, every byte read once.

* **Inputs** are files, directories (recursively; names starting with ``.`` or ``_`` skipped) and
  globs, local or by URI (anything ``pyarrow.fs`` opens: ``s3://``, ``gs://``, ``hdfs://``).
  Formats by extension (``.txt`` and anything else: one text per line; ``.jsonl`` / ``.json``;
  ``.csv``; ``.parquet``), each optionally ``.gz``.
* **Units** are planned from file sizes and Parquet footers only, never by reading content:
  plain text / JSONL files are cut into byte ranges of ``unit_bytes`` (a line belongs to the unit
  its first byte lies in); Parquet files into row groups; ``.gz`` and CSV files (a quoted field
  may hold a newline) are one unit each.  A unit's id hashes its file, the file's identity
  (size and modification time) and its range, so a changed file gets new units.
* **Reading**: one task per file reads its units in order, each byte once (a resumed run seeks
  past committed units using their records), so line numbers are exact without re-reading:
  ``line`` is the 1-based physical line a row starts on (CSV: of its record; Parquet: the row
  number).  Every row comes out either with its ``text`` or with a quarantine ``reason``; after
  a unit's rows comes one *end row* (``meta`` set) carrying the unit's counts.

Bad rows are never dropped: invalid UTF-8, lone surrogates (a truncated emoji's ``\\ud83d``),
NUL, empty / whitespace-only text, text over ``max_chars``, malformed or non-object JSON, a
missing / null / non-string field, CSV records with the wrong number of fields or an
unterminated quote (the swallowed lines are re-read as records of their own), and the damaged
tail of a truncated compressed file (one row naming the decompressed byte offset).  UTF-8 BOMs
are stripped from text, JSONL and CSV files.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import itertools
import json
import os
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from albert_ray.errors import USER_ERRORS, InputUnreadable, first_line, one_line
from albert_ray.paths import fs_and_path, shown, where, without_credentials

INPUT_FORMATS = ("text", "jsonl", "csv", "parquet")
RAW_LIMIT = 1000  # characters of an offending line kept in the quarantine
BOM = b"\xef\xbb\xbf"
CHUNK = 1 << 22  # bytes per read

# what a read task hands on: one row per input row, then one end row per unit (``meta`` set)
ROW_SCHEMA = pa.schema(
    [
        ("unit", pa.string()),
        ("row", pa.int64()),
        ("source", pa.string()),
        ("line", pa.int64()),
        ("id", pa.string()),
        ("text", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        ("meta", pa.string()),
    ]
)


@dataclass(frozen=True)
class ReadOptions:
    """How rows are found in the inputs and which are refused."""

    format: str = "auto"  # text | jsonl | csv | parquet | auto (by extension)
    text_field: str = "text"  # JSONL / CSV / Parquet column holding the text
    id_field: str | None = None  # column copied to ``id``
    max_chars: int = 100_000  # longer texts are quarantined

    def __post_init__(self):
        if self.format not in INPUT_FORMATS + ("auto",):
            raise ValueError(f"format={self.format!r}: must be one of {INPUT_FORMATS + ('auto',)}")
        if self.max_chars < 1:
            raise ValueError(f"max_chars={self.max_chars!r}: must be >= 1")


@dataclass(frozen=True)
class InputFile:
    path: str  # local absolute path or URI (without the input's credentials and options)
    fmt: str
    size: int
    mtime_ns: int
    opener: str = ""  # a URI input's file with the input's credentials and options, as opened

    @property
    def location(self) -> str:
        """What :func:`fs_and_path` opens the file by."""
        return self.opener or self.path

    @property
    def identity(self) -> str:
        return f"{self.size}:{self.mtime_ns}"

    @property
    def compressed(self) -> bool:
        return self.path.lower().endswith(".gz")


@dataclass(frozen=True)
class Unit:
    """A piece of one input file: a byte range (plain text / JSONL), a row group (Parquet) or the
    whole file (``start=0, stop=-1``)."""

    uid: str
    path: str
    fmt: str
    identity: str
    start: int
    stop: int


# ---- inputs ---------------------------------------------------------------------------------
def detect_input_format(path: str, default: str = "auto") -> str:
    if default != "auto":
        return default
    name = path.lower().removesuffix(".gz")
    for ext, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".parquet", "parquet")):
        if name.endswith(ext):
            return fmt
    return "text"


def _visible(name: str) -> bool:
    return not name.startswith((".", "_"))


def expand_inputs(inputs, fmt: str = "auto") -> list[InputFile]:
    """The files named by paths, directories (recursively) and globs, local or by URI, with the
    size and modification time that identify their content.

    Raises:
        FileNotFoundError: an input matches no file.
        PermissionError: a local file this process cannot open (said here, in the driver, before
            any read task would fail on it).
    """
    files: list[InputFile] = []
    for item in inputs:
        if "://" in item:
            fs, path = fs_and_path(item)
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                infos = [
                    i
                    for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                    if i.type == pafs.FileType.File and _visible(Path(i.path).name)
                ]
            else:
                infos = [info] if info.type == pafs.FileType.File else []
            found = [(*file_uris(item, path, i.path), i) for i in sorted(infos, key=lambda i: i.path)]
        else:
            if os.path.isdir(item):
                paths = sorted(
                    str(p)
                    for p in Path(item).rglob("*")
                    if p.is_file()
                    and _visible(p.name)
                    and all(_visible(part) for part in p.relative_to(item).parts)
                )
            elif any(c in item for c in "*?["):
                paths = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            else:
                paths = [item] if os.path.isfile(item) else []
            fs = pafs.LocalFileSystem()
            found = [(os.path.abspath(p), "", fs.get_file_info(_readable(os.path.abspath(p)))) for p in paths]
        if not found:
            raise FileNotFoundError(f"input {without_credentials(item)!r} matches no file{where(item)}")
        for path, opener, info in found:
            files.append(
                InputFile(
                    path,
                    detect_input_format(path, fmt),
                    int(info.size or 0),
                    int(info.mtime_ns or 0),
                    opener if opener != path else "",
                )
            )
    seen: set[str] = set()
    return [f for f in files if not (f.path in seen or seen.add(f.path))]


def file_uris(item: str, root: str, file: str) -> tuple[str, str]:
    """A file found under URI input ``item`` (``root`` its path in the filesystem, ``file`` the
    file's): its URI as shown and recorded (no credentials, no ``?options``), and the URI it is
    opened by, which keeps the input's credentials and options (``s3://KEY:SECRET@bucket/dir?
    endpoint_override=host:port``: a file opened as ``s3://bucket/dir/f`` would be looked for
    on AWS) and its host (``hdfs://namenode:8020/...``)."""
    parts = urlsplit(item)
    suffix = file[len(root.rstrip("/")) :] if file.startswith(root.rstrip("/")) else "/" + file
    path = parts.path.rstrip("/") + suffix if parts.path else suffix
    opened = urlunsplit(parts._replace(path=path))
    return shown(opened), opened


def _readable(path: str) -> str:
    """``path``, once this process has opened it: PermissionError naming the file otherwise."""
    try:
        with open(path, "rb"):
            return path
    except PermissionError as exc:
        raise PermissionError(f"input {path} cannot be read: {exc.strerror}") from None


def input_roots(inputs) -> list[str]:
    """The local folders the inputs name (a directory, or a glob's fixed leading folders)."""
    roots = []
    for item in inputs:
        if "://" in item:
            continue
        if any(c in item for c in "*?["):
            fixed = []
            for part in Path(item).parts:
                if any(c in part for c in "*?["):
                    break
                fixed.append(part)
            roots.append(os.path.abspath(os.path.join(*fixed)) if fixed else os.getcwd())
        elif os.path.isdir(item):
            roots.append(os.path.abspath(item))
    return roots


# ---- units ----------------------------------------------------------------------------------
def unit_id(path: str, identity: str, start: int, stop: int) -> str:
    # a letter first: an all-digit id would be read back as an integer partition value
    return "u" + hashlib.sha1(f"{path}|{identity}|{start}|{stop}".encode()).hexdigest()[:15]


def _row_groups(f: InputFile) -> int | None:
    fs, p = fs_and_path(f.location)
    try:
        with fs.open_input_file(p) as fh:
            return pq.ParquetFile(fh).metadata.num_row_groups
    except (OSError, pa.ArrowInvalid):
        return None  # unreadable: one unit, whose read task quarantines it with the reason


def plan_units(files: list[InputFile], unit_bytes: int) -> list[Unit]:
    """Cut files into units from their sizes (and Parquet footers) alone, in file order."""
    if unit_bytes < 1:
        raise ValueError(f"unit_bytes={unit_bytes!r}: must be >= 1")
    units = []
    for f in files:
        if f.fmt in ("text", "jsonl") and not f.compressed:
            ranges = [(s, min(f.size, s + unit_bytes)) for s in range(0, f.size, unit_bytes)] or [(0, 0)]
        elif f.fmt == "parquet" and not f.compressed and (groups := _row_groups(f)):
            ranges = [(g, g + 1) for g in range(groups)]
        else:
            ranges = [(0, -1)]
        units += [Unit(unit_id(f.path, f.identity, s, e), f.path, f.fmt, f.identity, s, e) for s, e in ranges]
    return units


# ---- row validation -------------------------------------------------------------------------
def text_problem(text, field: str, max_chars: int) -> str | None:
    """Why a text cannot be labeled (``None``: it can).  Reasons read ``kind (detail)``."""
    if text is None:
        return f"null field {field!r}"
    if not isinstance(text, str):
        return f"field {field!r} is not a string ({type(text).__name__})"
    if "\x00" in text:
        return f"NUL character (at character {text.index(chr(0))})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"lone surrogate (at character {exc.start}: a truncated emoji or escape)"
    if not text.strip():
        return "empty text"
    if len(text) > max_chars:
        return f"text too long ({len(text)} characters, max_chars={max_chars})"
    return None


def reason_kind(reason: str) -> str:
    """A reason without its detail: ``NUL character (at character 3)`` -> ``NUL character``."""
    return reason.split(" (")[0]


def _clip(raw: str) -> str:
    return raw[:RAW_LIMIT].encode("utf-8", "replace").decode("utf-8")


# ---- byte streams ---------------------------------------------------------------------------
class Damaged(Exception):
    """A compressed stream ended early or is corrupt; ``offset``: decompressed bytes read."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


def _chunks(path: str, start: int = 0) -> Iterator[bytes]:
    """The file's bytes from ``start`` (decompressed for ``.gz``), chunk by chunk; a damaged
    compressed stream ends with :class:`Damaged` after every byte that could be recovered."""
    fs, p = fs_and_path(path)
    if not path.lower().endswith(".gz"):
        with fs.open_input_file(p) as f:
            f.seek(start)
            while chunk := f.read(CHUNK):
                yield chunk
        return
    offset = 0
    with fs.open_input_stream(p, compression=None) as raw, gzip.GzipFile(fileobj=raw) as f:
        while True:
            try:
                chunk = f.read1(CHUNK)
            except (EOFError, OSError, zlib.error) as exc:
                raise Damaged(f"{type(exc).__name__}: {exc}", offset) from None
            if not chunk:
                return
            offset += len(chunk)
            yield chunk


def _clean(line: bytes, pos: int) -> bytes:
    if line.endswith(b"\r"):
        line = line[:-1]
    return line[3:] if pos == 0 and line.startswith(BOM) else line


def physical_lines(path: str, start: int = 0) -> Iterator[tuple[int, bytes, int]]:
    """``(byte offset, line, offset after it)`` from ``start`` (a line start), without ``\\n`` / ``\\r\\n``; a
    last line without a newline counts; a BOM at byte 0 is dropped.  At the end of a damaged
    compressed stream raises :class:`Damaged` with the unfinished line in ``.tail``."""
    pos, rest = start, b""
    try:
        for chunk in _chunks(path, start):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield pos, _clean(line, pos), pos + len(line) + 1
                pos += len(line) + 1
    except Damaged as exc:
        exc.tail = rest
        raise
    if rest and not (pos == 0 and rest == BOM):  # a file holding only a BOM has no line
        yield pos, _clean(rest, pos), pos + len(rest)


# ---- rows of each format --------------------------------------------------------------------
# Each parser yields ``(line, id, text, reason, raw)``: ``reason`` is None for a row to label.
def _decoded(raw: bytes) -> tuple[str | None, str | None]:
    """(text, reason) of a physical line."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 (byte {exc.start})"


def _line_row(line_no: int, raw: bytes, fmt: str, opts: ReadOptions):
    text, reason = _decoded(raw)
    if reason:
        return line_no, None, None, reason, raw.decode("utf-8", "replace")
    if fmt == "text":
        return line_no, None, text, text_problem(text, "text", opts.max_chars), text
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        return line_no, None, None, f"not valid JSON ({exc.msg})", text
    if not isinstance(rec, dict):
        return line_no, None, None, f"not a JSON object ({type(rec).__name__})", text
    rid = rec.get(opts.id_field) if opts.id_field else None
    rid = None if rid is None else str(rid)
    if opts.text_field not in rec:
        return line_no, rid, None, f"missing field {opts.text_field!r}", text
    value = rec[opts.text_field]
    return line_no, rid, value, text_problem(value, opts.text_field, opts.max_chars), text


def _csv_rows(lines: Iterator[tuple[int, bytes, int]], opts: ReadOptions):
    """CSV records with exact line numbers.  A record whose field count differs from the
    header's and that ran over several lines (an unterminated quote swallowing the rows after
    it) is quarantined by its first line and the lines it swallowed are read again."""
    pending: deque = deque()  # (line_no, str, decode problem) pushed back to read again
    consumed: list = []

    def feed():
        for item in iter(lambda: pending.popleft() if pending else next(decoded, None), None):
            consumed.append(item)
            yield item[1]

    def decode(item):
        text, reason = _decoded(item[1])
        return item[0] + 1, (item[1].decode("utf-8", "replace") if reason else text) + "\n", reason

    decoded = map(decode, ((i, raw) for i, (_, raw, _) in enumerate(lines)))
    reader, header, text_col, id_col = csv.reader(feed(), strict=True), None, None, None
    while True:
        consumed.clear()
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if not consumed:
                return
            yield consumed[0][0], None, None, _csv_error_reason(exc, consumed), consumed[0][1].rstrip("\n")
            pending.extendleft(reversed(consumed[1:]))
            reader = csv.reader(feed(), strict=True)
            continue
        line_no, raw = consumed[0][0], "".join(c[1] for c in consumed).rstrip("\n")
        if header is None:
            header = [h.strip() for h in rec]
            text_col = header.index(opts.text_field) if opts.text_field in header else None
            id_col = header.index(opts.id_field) if opts.id_field in header else None
            continue
        problem, swallowed = _csv_record_problem(rec, consumed, header)
        if swallowed:  # quarantined by its first line; the lines it swallowed are read again
            yield line_no, None, None, problem, consumed[0][1].rstrip("\n")
            pending.extendleft(reversed(consumed[1:]))
        elif problem:
            yield line_no, None, None, problem, raw
        elif text_col is None:
            yield (
                line_no,
                None,
                None,
                f"missing field {opts.text_field!r} (the header has {', '.join(header)})",
                raw,
            )
        else:
            text, rid = rec[text_col], rec[id_col] if id_col is not None else None
            yield line_no, rid, text, text_problem(text, opts.text_field, opts.max_chars), raw


def _csv_error_reason(exc: csv.Error, consumed: list) -> str:
    """Why the CSV reader failed on the lines it ``consumed`` (``(line_no, text, decode problem)``)."""
    if "unexpected end of data" in str(exc):
        return (
            f"unterminated quote (from line {consumed[0][0]} to the end of the file; "
            "the following lines are read again)"
        )
    if len(consumed) > 1:
        return (
            f"unterminated quote (the record ran over lines {consumed[0][0]}-{consumed[-1][0]}, then: {exc}; "
            f"the following lines are read again)"
        )
    return f"malformed CSV ({one_line(exc)})"


def _csv_record_problem(rec: list[str], consumed: list, header: list[str]) -> tuple[str | None, bool]:
    """Why a parsed CSV record is quarantined (None: it is not), and whether it swallowed the
    lines after its first (a field count off the header's over several lines: an unterminated quote)."""
    bad_utf8 = next((c for c in consumed if c[2]), None)
    if bad_utf8:
        return f"{bad_utf8[2][:-1]}, line {bad_utf8[0]})", False
    if not rec:
        return "empty line", False
    if len(rec) != len(header) and len(consumed) > 1:
        return (
            f"unterminated quote (the record ran over lines {consumed[0][0]}-{consumed[-1][0]} with {len(rec)} "
            f"fields, the header has {len(header)}; the following lines are read again)"
        ), True
    if len(rec) != len(header):
        return f"wrong number of fields ({len(rec)}, the header has {len(header)})", False
    return None, False


class _ByteSource:
    """A file's bytes for pyarrow that remember an error of the source itself (a network failure,
    a refused object), told apart from one of decoding them: pyarrow raises ``OSError`` for both."""

    def __init__(self, f):
        self.f, self.failed = f, None

    def _io(self, call, *args):
        try:
            return call(*args)
        except OSError as exc:
            self.failed = exc
            raise

    def read(self, n=-1):
        return self._io(self.f.read, None if n is None or n < 0 else n)

    def seek(self, offset, whence=0):
        return self._io(self.f.seek, offset, whence)

    def tell(self):
        return self._io(self.f.tell)

    def readable(self):
        return True

    def seekable(self):
        return True

    @property
    def closed(self):
        return self.f.closed

    def close(self):
        self.f.close()


def _parquet_rows(path: str, group: int, opts: ReadOptions):
    """A row group's rows (``group`` -1: the file's). A file that does not decode is one quarantine
    row; a source that fails to give its bytes raises (the read task's error, not the file's)."""

    fs, p = fs_and_path(path)
    first = 0
    with fs.open_input_file(p) as f:
        source = _ByteSource(f)
        try:
            pf = pq.ParquetFile(source)
            names = pf.schema_arrow.names
            first = sum(pf.metadata.row_group(i).num_rows for i in range(max(group, 0)))
            cols = [c for c in (opts.text_field, opts.id_field) if c and c in names]
            table = pf.read_row_group(group, columns=cols) if group >= 0 else pf.read(columns=cols)
        except (OSError, pa.ArrowInvalid) as exc:
            if source.failed is not None:
                raise source.failed from None
            yield first + 1, None, None, f"unreadable Parquet ({one_line(exc)})", ""
            return
    ids = (
        table.column(opts.id_field).to_pylist()
        if opts.id_field in table.column_names
        else [None] * table.num_rows
    )
    if opts.text_field not in table.column_names:
        for i in range(table.num_rows):
            yield (
                first + i + 1,
                ids[i],
                None,
                f"missing field {opts.text_field!r} (columns: {', '.join(names)})",
                "",
            )
        return
    column = table.column(opts.text_field)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        for i, value in enumerate(column.to_pylist()):
            yield (
                first + i + 1,
                ids[i],
                None,
                f"field {opts.text_field!r} is not a string ({column.type})",
                str(value),
            )
        return
    for i, text in enumerate(column.to_pylist()):
        rid = None if ids[i] is None else str(ids[i])
        yield first + i + 1, rid, text, text_problem(text, opts.text_field, opts.max_chars), text or ""


# ---- read tasks -----------------------------------------------------------------------------
BLOCK_BYTES = 128 << 10  # about this many bytes of text per table handed on


class _Blocks:
    """Collects rows into Arrow tables of at most ``block_rows`` rows or about ``BLOCK_BYTES``
    of text (columns, not row dicts)."""

    def __init__(self, path: str, block_rows: int):
        self.path, self.block_rows = path, block_rows
        self.cols: dict[str, list] = {name: [] for name in ROW_SCHEMA.names}
        self.bytes = 0

    def add(self, unit: str, row: int, line, rid, text, reason, raw) -> None:
        c = self.cols
        c["unit"].append(unit), c["row"].append(row), c["source"].append(self.path), c["line"].append(line)
        c["id"].append(rid)
        c["text"].append(None if reason else text)
        c["reason"].append(reason)
        c["raw"].append(_clip(raw) if reason else None)
        c["meta"].append(None)
        self.bytes += 3 * len(text) if isinstance(text, str) and not reason else 3 * min(len(raw or ""), 1000)

    def end(self, unit: str, meta: dict) -> None:
        for name in ROW_SCHEMA.names:
            self.cols[name].append(None)
        self.cols["unit"][-1], self.cols["row"][-1], self.cols["source"][-1] = unit, -1, self.path
        self.cols["meta"][-1] = json.dumps(meta)

    def ready(self, final: bool = False) -> Iterator[pa.Table]:
        if (
            len(self.cols["unit"]) >= self.block_rows
            or self.bytes >= BLOCK_BYTES
            or (final and self.cols["unit"])
        ):
            yield pa.Table.from_pydict(self.cols, schema=ROW_SCHEMA)
            self.cols = {name: [] for name in ROW_SCHEMA.names}
            self.bytes = 0


def read_task(file: InputFile, units: list[Unit], done: dict[str, dict] | None = None) -> dict:
    """What :func:`read_file` takes for ``units`` of ``file`` (in file order): the units in ``done``
    (uid -> its commit record) are skipped, their records saying where the next unit starts."""
    done = done or {}
    opened = {"open": file.opener} if file.opener else {}
    return {
        "path": file.path,
        "fmt": file.fmt,
        **opened,
        "units": [
            {
                "uid": u.uid,
                "start": u.start,
                "stop": u.stop,
                "todo": u.uid not in done,
                "resume": _resume_point(done.get(u.uid)),
            }
            for u in units
        ],
    }


def _resume_point(record: dict | None) -> dict | None:
    return (
        None
        if record is None
        else {"next_offset": record.get("next_offset"), "next_line": record.get("next_line")}
    )


def read_file(task: dict, opts: ReadOptions, block_rows: int = 1024) -> Iterator[pa.Table]:
    """The rows of one file's pending units, in order, as Arrow tables of ``ROW_SCHEMA``.

    ``task`` (:func:`read_task`): ``{"path", "fmt", "units": [{"uid", "start", "stop", "todo",
    "resume"}]}`` in file order, and ``"open"`` (:attr:`InputFile.location`) when the file is
    opened by another URI; a unit with ``todo`` false is skipped, and its ``resume``
    (``next_offset``, ``next_line`` from its commit record) says where the next unit starts.
    """
    try:
        yield from _read_file(task, opts, block_rows)
    except OSError as exc:  # one line naming the file; a missing or forbidden file stays the user's error
        user = isinstance(exc, USER_ERRORS) and type(exc).__module__ == "builtins"
        raise (type(exc) if user else InputUnreadable)(
            f"input {task['path']} cannot be read: {first_line(exc)}"
        ) from None


def _opened(task: dict) -> str:
    """What a read task opens its file by (``InputFile.location``)."""
    return task.get("open", task["path"])


def _read_file(task: dict, opts: ReadOptions, block_rows: int) -> Iterator[pa.Table]:
    out = _Blocks(task["path"], block_rows)
    units = task["units"]
    if task["fmt"] in ("text", "jsonl") and units[0]["stop"] >= 0:
        for i, u in enumerate(units):
            if u["todo"] and (i == 0 or not units[i - 1]["todo"]):
                at = units[i - 1]["resume"] if i else {"next_offset": 0, "next_line": 1}
                run = list(itertools.takewhile(lambda v: v["todo"], units[i:]))
                yield from _read_ranges(task, run, at, opts, out)
    else:
        for u in (u for u in units if u["todo"]):
            yield from _read_whole(task, u, opts, out)
    yield from out.ready(final=True)


def _read_ranges(task: dict, run: list[dict], at: dict, opts: ReadOptions, out: _Blocks):
    """Consecutive byte-range units read in one pass from ``at``."""
    k, line_no, end, rows = 0, at["next_line"], at["next_offset"], 0
    first_line = line_no

    def finish(next_offset):
        out.end(
            run[k]["uid"],
            {
                "rows": rows,
                "first_line": first_line,
                "lines": line_no - first_line,
                "next_offset": next_offset,
                "next_line": line_no,
            },
        )

    for offset, raw, line_end in physical_lines(_opened(task), end):
        end = line_end  # where the file's last line read ends
        while k < len(run) and offset >= run[k]["stop"]:
            finish(offset)
            k, rows, first_line = k + 1, 0, line_no
        if k == len(run):
            return
        out.add(run[k]["uid"], rows, *_line_row(line_no, raw, task["fmt"], opts))
        rows, line_no = rows + 1, line_no + 1
        yield from out.ready()
    while k < len(run):  # the end of the file
        finish(end)
        k, rows, first_line = k + 1, 0, line_no


def _read_whole(task: dict, unit: dict, opts: ReadOptions, out: _Blocks):
    """A whole-file unit (compressed, CSV, or Parquet row group)."""
    uid, fmt, rows, last = unit["uid"], task["fmt"], 0, 0
    if fmt == "parquet":
        parsed = _parquet_rows(_opened(task), unit["start"] if unit["stop"] >= 0 else -1, opts)
    elif fmt == "csv":
        parsed = _csv_rows(physical_lines(_opened(task)), opts)
    else:
        lines = physical_lines(_opened(task))
        parsed = (_line_row(i + 1, raw, fmt, opts) for i, (_, raw, _) in enumerate(lines))
    try:
        for row in parsed:
            out.add(uid, rows, *row)
            rows, last = rows + 1, row[0]
            yield from out.ready()
    except Damaged as exc:
        tail = getattr(exc, "tail", b"")
        out.add(
            uid,
            rows,
            last + 1,
            None,
            None,
            f"truncated or corrupt compressed file ({exc}; {exc.offset} bytes decompressed, the rest is lost)",
            tail.decode("utf-8", "replace"),
        )
        rows += 1
    out.end(uid, {"rows": rows})
