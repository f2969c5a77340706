"""Readers for the four training formats, with validation that names file:line and the reason.

* ``csv``: header ``label,content``; multi-label rows join labels with ``|``.
* ``bio``: one ``char tag`` per line, a blank line between sentences (People's Daily, CLUENER).
* ``cluener``: JSON lines ``{"text", "label": {type: {mention: [[start, end_inclusive], ...]}}}``.
* ``jsonl``: ``{"text", "label"}`` | ``{"text", "labels": [...]}`` |
  ``{"text", "entities": [{"start", "end" (exclusive), "label"}]}``.

Malformed records raise :class:`DataError` (``on_bad_records="error"``) or are skipped and
counted (``"skip"``); never dropped silently.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from albert_ray.paths import is_file, local_file, not_found, shown
from albert_ray.tasks.label_encoding import tag_error, tags_to_spans

log = logging.getLogger(__name__)

FORMATS = ("csv", "bio", "cluener", "jsonl")
BAD_RECORD_POLICIES = ("error", "skip")


class DataError(ValueError):
    """A malformed record; the message starts with ``file:line``."""


@dataclass(frozen=True)
class Example:
    """One record. ``label`` for multi-class, ``labels`` for multi-label, ``spans`` for NER."""

    text: str
    source: str
    label: str | None = None
    labels: tuple[str, ...] | None = None
    spans: tuple[tuple[int, int, str], ...] | None = None


@dataclass
class ReadResult:
    examples: list[Example] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file:line, reason)

    def summary(self) -> str:
        return f"{len(self.examples)} examples read, {len(self.skipped)} bad records skipped"


class _Source:
    """A data file as the readers see it: opened from ``local`` (a URI's copy on this node),
    named as the user gave it (a URI without credentials) in ``file:line`` messages."""

    def __init__(self, location: str | Path):
        self.name = shown(location)
        self.local = local_file(location)

    def open(self, **kwargs):
        return self.local.open(**kwargs)

    def __str__(self) -> str:
        return self.name


def detect_format(source: _Source) -> str:
    """Guess the format from the file name and, for JSON lines, the first record."""
    suffix = PurePosixPath(source.name).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json"):
        with source.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        first = json.loads(line)
                    except json.JSONDecodeError:
                        return "jsonl"
                    return "cluener" if isinstance(first.get("label"), dict) else "jsonl"
        return "jsonl"
    return "bio"


def read_examples(
    path: str | Path,
    fmt: str = "auto",
    multilabel: bool = False,
    scheme: str = "BIO",
    on_bad_records: str = "error",
    label_sep: str = "|",
) -> ReadResult:
    """Read a data file.

    Args:
        path: the file: a local path or a URI (``s3://...``, copied to this node's cache first).
        fmt: one of ``FORMATS`` or ``"auto"``.
        multilabel: CSV labels are ``label_sep``-joined lists.
        scheme: tag scheme of ``bio`` files (``BIO`` or ``BIOES``).
        on_bad_records: ``"error"`` raises on the first malformed record, ``"skip"`` skips and counts.

    Raises:
        FileNotFoundError, DataError, ValueError (bad arguments), OSError (a store that refuses).
    """
    if not is_file(path):
        raise not_found("data file", path)
    if on_bad_records not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_records={on_bad_records!r}: must be one of {BAD_RECORD_POLICIES}")
    source = _Source(path)
    fmt = detect_format(source) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: must be one of {FORMATS} or 'auto'")
    result = ReadResult()
    reader = {"csv": _read_csv, "bio": _read_bio, "cluener": _read_cluener, "jsonl": _read_jsonl}[fmt]
    records = reader(source, multilabel=multilabel, scheme=scheme, label_sep=label_sep)
    for item in records:
        if isinstance(item, Example):
            result.examples.append(item)
            continue
        where, reason = item
        if on_bad_records == "error":
            raise DataError(f"{where}: {reason} (set on_bad_records: skip to skip and count such records)")
        result.skipped.append(item)
    if result.skipped:
        log.warning(
            "%s: skipped %d bad records, first: %s: %s", source, len(result.skipped), *result.skipped[0]
        )
    log.info("%s (%s): %s", source, fmt, result.summary())
    return result


def _empty(text: str) -> bool:
    return not text or not text.strip()


def _read_csv(path: _Source, multilabel: bool, label_sep: str, **_):
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["label", "content"]:
            yield f"{path}:1", f"expected the header 'label,content', got {header!r}"
            return
        for row in rows:
            where = f"{path}:{rows.line_num}"
            if len(row) != 2:
                yield where, f"expected 2 columns (label,content), got {len(row)}"
                continue
            label, text = row[0].strip(), row[1]
            if _empty(text):
                yield where, "empty text"
                continue
            if not label:
                yield where, "empty label"
                continue
            if multilabel:
                labels = tuple(sorted({part.strip() for part in label.split(label_sep) if part.strip()}))
                yield Example(text=text, source=where, labels=labels)
            else:
                yield Example(text=text, source=where, label=label)


def _read_bio(path: _Source, scheme: str, **_):
    chars, tags, start_line, bad = [], [], None, None
    with path.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                if chars or bad:
                    yield _bio_sentence(path, start_line, chars, tags, scheme, bad)
                chars, tags, start_line, bad = [], [], None, None
                continue
            start_line = start_line or lineno
            parts = line.split()
            if bad:
                continue
            if len(parts) != 2:
                what = "a tag without a character" if len(parts) == 1 else f"{len(parts)} fields"
                bad = (f"{path}:{lineno}", f"expected 'char tag', got {what}: {line!r}")
                continue
            ch, tag = parts
            if len(ch) != 1:
                bad = (f"{path}:{lineno}", f"expected one character per line, got {ch!r}")
                continue
            chars.append(ch)
            tags.append(tag)
    if chars or bad:
        yield _bio_sentence(path, start_line, chars, tags, scheme, bad)


def _bio_sentence(path, start_line, chars, tags, scheme, bad):
    if bad:
        return bad
    reason = tag_error(tags, scheme)
    if reason:
        return f"{path}:{start_line}", f"sentence starting here: {reason}"
    return Example(
        text="".join(chars), source=f"{path}:{start_line}", spans=tuple(tags_to_spans(tags, scheme))
    )


def _json_lines(path: _Source):
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, None, f"not valid JSON ({exc.msg})"
                continue
            if not isinstance(record, dict):
                yield where, None, "expected a JSON object"
                continue
            text = record.get("text")
            if not isinstance(text, str):
                yield where, None, "missing or non-string field 'text'"
                continue
            if _empty(text):
                yield where, None, "empty text"
                continue
            yield where, record, None


def _check_spans(text: str, spans) -> str | None:
    last_end = -1
    for s, e, label in sorted(spans):
        if not (isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= len(text)):
            return f"span ({s}, {e}, {label!r}) is outside the text of length {len(text)}"
        if s < last_end:
            return f"span ({s}, {e}, {label!r}) overlaps another entity"
        last_end = e
    return None


def _read_cluener(path: _Source, **_):
    for where, record, error in _json_lines(path):
        if error:
            yield where, error
            continue
        text, label = record["text"], record.get("label", {})
        if not isinstance(label, dict):
            yield where, "field 'label' must be an object {type: {mention: [[start, end], ...]}}"
            continue
        spans, reason = [], None
        for etype, mentions in label.items():
            for mention, positions in (mentions or {}).items():
                for pos in positions:
                    s, e = pos[0], pos[1] + 1  # CLUENER ends are inclusive
                    if not (0 <= s < e <= len(text)):
                        reason = f"span [{pos[0]}, {pos[1]}] of {mention!r} is outside the text of length {len(text)}"
                    elif text[s:e] != mention:
                        reason = f"span [{pos[0]}, {pos[1]}] is {text[s:e]!r} in the text, not {mention!r}"
                    spans.append((s, e, etype))
        reason = reason or _check_spans(text, spans)
        if reason:
            yield where, reason
            continue
        yield Example(text=text, source=where, spans=tuple(sorted(spans)))


def _read_jsonl(path: _Source, **_):
    for where, record, error in _json_lines(path):
        if error:
            yield where, error
            continue
        text = record["text"]
        if "entities" in record:
            try:
                spans = [(int(x["start"]), int(x["end"]), str(x["label"])) for x in record["entities"]]
            except (KeyError, TypeError, ValueError):
                yield where, "each entity needs integer 'start', 'end' (exclusive) and a 'label'"
                continue
            for x in record["entities"]:
                if (
                    "text" in x
                    and 0 <= x["start"] < x["end"] <= len(text)
                    and text[x["start"] : x["end"]] != x["text"]
                ):
                    found = text[x["start"] : x["end"]]
                    error = f"entity text {x['text']!r} differs from the text at [{x['start']}, {x['end']}): {found!r}"
            error = error or _check_spans(text, spans)
            if error:
                yield where, error
                continue
            yield Example(text=text, source=where, spans=tuple(sorted(spans)))
        elif "labels" in record:
            labels = record["labels"]
            if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
                yield where, "field 'labels' must be a list of non-empty strings"
                continue
            yield Example(text=text, source=where, labels=tuple(sorted(set(labels))))
        elif "label" in record:
            if not isinstance(record["label"], str) or not record["label"]:
                yield where, "field 'label' must be a non-empty string"
                continue
            yield Example(text=text, source=where, label=record["label"])
        else:
            yield where, "missing field: one of 'label', 'labels' or 'entities'"
