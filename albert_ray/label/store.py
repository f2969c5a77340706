"""The output folder of a labeling run: its layout, schemas and the one class that reads and writes
it (:class:`OutputStore`), on a local disk or any store pyarrow opens.

Layout of ``<output>``:

* ``unit=<id>/part-<first row>-<last row>.parquet``: labeled rows (schema: :func:`output_schema`);
* ``_quarantine/unit=<id>/part-*.parquet``: rows that cannot be labeled (``QUARANTINE_SCHEMA``:
  ``source``, ``line``, ``id``, ``reason``, ``raw``);
* ``_units/<id>.json``: a unit's commit record, written last, once both its labeled and its
  quarantined rows are on storage (rows in / out / quarantined, input identity, line numbers,
  files, label counts, quarantine reasons);
* ``_manifest.json``: the run's totals; ``_summary.html``: the same as a page.

Names starting with ``_`` are skipped by pandas, pyarrow, duckdb and Spark reading the folder.

A unit is complete when its record exists, was written with the same labeling settings
(model, text field, limits, output columns) and its files are there.  A re-run reuses complete
units and deletes everything else of the plan's units before labeling them again: partial
files of an interrupted unit, and the units of an input that changed (its size or modification
time; new unit ids) — so there is never more than one version of a row.  Units of inputs not
given any more are refused unless ``prune`` is set.
"""

from __future__ import annotations

import json
import uuid
import zlib

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import albert_ray  # noqa: F401 TF_USE_LEGACY_KERAS before TensorFlow
from albert_ray.paths import fs_and_path
from albert_ray.tasks.registry import task_for

QUARANTINE_DIR = "_quarantine"
UNITS_DIR = "_units"
MANIFEST = "_manifest.json"
SUMMARY_HTML = "_summary.html"  # the manifest for people: counts, quarantine reasons, throughput
STATS_SCHEMA = pa.schema(
    [
        ("unit", pa.string()),
        ("precision", pa.string()),
        ("rows", pa.int64()),
        ("out", pa.int64()),
        ("bad", pa.int64()),
        ("parts", pa.string()),
        ("quarantine_parts", pa.string()),
        ("sizes", pa.string()),
        ("quarantine_sizes", pa.string()),
        ("counts", pa.string()),
        ("reasons", pa.string()),
        ("text_bytes", pa.int64()),
        ("meta", pa.string()),
        ("label_seconds", pa.float64()),
        ("call_seconds", pa.float64()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("line", pa.int64()),
        ("id", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)


def output_schema(spec, include_text: bool = False, include_probs: bool = False) -> pa.Schema:
    """The Parquet schema of labeled rows (``unit`` comes from the partition directory)."""

    fields = [pa.field("source", pa.string()), pa.field("line", pa.int64()), pa.field("id", pa.string())]
    if include_text:
        fields.append(pa.field("text", pa.string()))
    fields += task_for(spec).output_fields(spec, include_probs)
    return pa.schema(fields + [pa.field("model_name", pa.string()), pa.field("model_version", pa.string())])


# ---- the output folder ----------------------------------------------------------------------
class OutputStore:
    """Files of one output folder (local or URI); every write is all-or-nothing."""

    def __init__(self, output: str):
        self.output = output
        self.fs, self.root = fs_and_path(output)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def unit_dir(self, uid: str, quarantine: bool = False) -> str:
        return self._path(*((QUARANTINE_DIR,) if quarantine else ()), f"unit={uid}")

    def _write(self, path: str, write) -> None:
        """Write through a hidden temporary name and rename (local); object stores publish an
        object only when its upload completes."""
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if not self.local:
            return write(path)
        head, name = path.rsplit("/", 1)
        tmp = f"{head}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        write(tmp)
        self.fs.move(tmp, path)

    def write_table(self, table: pa.Table, path: str) -> list[int]:
        """Write ``table`` as Parquet; ``[bytes, crc32]`` of the file, which its unit's commit
        record keeps so that a damaged or truncated part is found before the unit is reused."""

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
        self._write(path, lambda p: self._write_stream(p, data))
        return [len(data), zlib.crc32(data)]

    def _write_stream(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def write_json(self, data: dict, *parts: str) -> None:
        self.write_bytes(json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8"), *parts)

    def write_bytes(self, data: bytes, *parts: str) -> None:
        self._write(self._path(*parts), lambda p: self._write_stream(p, data))

    def sizes(self, directory: str) -> dict[str, int]:
        """``{file name: bytes}`` of the files in a folder."""
        return {i.path.rsplit("/", 1)[-1]: i.size for i in self._file_infos(directory)}

    def crc32(self, path: str) -> int:
        with self.fs.open_input_stream(path) as f:
            return zlib.crc32(f.read())

    def _file_infos(self, directory: str) -> list:
        if self.fs.get_file_info(directory).type != pafs.FileType.Directory:
            return []
        return [
            i for i in self.fs.get_file_info(pafs.FileSelector(directory)) if i.type == pafs.FileType.File
        ]

    def files(self, directory: str) -> list[str]:
        return [i.path for i in self._file_infos(directory)]

    def records(self) -> dict[str, dict]:
        out = {}
        for path in self.files(self._path(UNITS_DIR)):
            if path.endswith(".json"):
                with self.fs.open_input_stream(path) as f:
                    rec = json.loads(f.read().decode("utf-8"))
                out[rec["uid"]] = rec
        return out

    def unit_dirs(self) -> set[str]:
        """Unit ids that have a folder of labeled or quarantined rows."""
        found = set()
        for base in (self.root, self._path(QUARANTINE_DIR)):
            if self.fs.get_file_info(base).type == pafs.FileType.Directory:
                for info in self.fs.get_file_info(pafs.FileSelector(base)):
                    name = info.path.rsplit("/", 1)[-1]
                    if info.type == pafs.FileType.Directory and name.startswith("unit="):
                        found.add(name[len("unit=") :])
        return found

    def delete_unit(self, uid: str) -> None:
        """The record first: a unit without a record is incomplete, whatever else is left."""
        record = self._path(UNITS_DIR, f"{uid}.json")
        if self.fs.get_file_info(record).type == pafs.FileType.File:
            self.fs.delete_file(record)
        for d in (self.unit_dir(uid), self.unit_dir(uid, quarantine=True)):
            if self.fs.get_file_info(d).type == pafs.FileType.Directory:
                self.fs.delete_dir(d)

    def keep_only(self, uid: str, names: set[str], quarantine: bool) -> None:
        """Delete files of a unit that its commit does not list (left by a failed attempt)."""
        for path in self.files(self.unit_dir(uid, quarantine)):
            if path.rsplit("/", 1)[-1] not in names:
                self.fs.delete_file(path)

    def has_parquet(self, base: str) -> bool:
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return False
        for info in self.fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            parts = info.path[len(base) :].strip("/").split("/")
            if info.path.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in parts):
                return True  # a file readers see (they skip names starting with _ or .)
        return False
