"""Bulk corpus labeling with Ray Data: read + validate (one task per file, each byte once) ->
label and write (an actor pool that loads the model once) -> commit units (the driver).

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
import logging
import os
import shutil
import time
import uuid
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import albert_ray  # noqa: F401 TF_USE_LEGACY_KERAS before TensorFlow
from albert_ray import __version__, modeldir
from albert_ray.errors import ONE_LINE, environment_fault, unwrapped
from albert_ray.io.corpus import (
    BLOCK_BYTES,
    INPUT_FORMATS,
    InputFile,
    ReadOptions,
    Unit,
    expand_inputs,
    input_roots,
    plan_units,
    read_file,
    read_task,
    reason_kind,
)
from albert_ray.model.memory_planner import parse_size
from albert_ray.paths import fs_and_path, is_uri, without_credentials
from albert_ray.reports.page import label_summary_page
from albert_ray.runtime.attach import (
    Interrupted,
    alive_nodes,
    configure_tf,
    init_ray,
    require_visible,
    require_visible_folder,
)
from albert_ray.runtime.progress import RowProgress
from albert_ray.spec import PRECISIONS  # not predict: that imports TensorFlow into the driver
from albert_ray.tasks.registry import task_for
from albert_ray.typedconfig import apply_overrides, build, read_yaml

log = logging.getLogger(__name__)

QUARANTINE_DIR = "_quarantine"
UNITS_DIR = "_units"
MANIFEST = "_manifest.json"
SUMMARY_HTML = "_summary.html"   # the manifest for people: counts, quarantine reasons, throughput
READ_AHEAD_BYTES = 64 << 20   # object store bytes the pipeline may hold (blocks read ahead of the actors)
STATS_SCHEMA = pa.schema([("unit", pa.string()), ("precision", pa.string()), ("rows", pa.int64()), ("out", pa.int64()),
                          ("bad", pa.int64()), ("parts", pa.string()), ("quarantine_parts", pa.string()), ("sizes", pa.string()),
                          ("quarantine_sizes", pa.string()),
                          ("counts", pa.string()), ("reasons", pa.string()), ("text_bytes", pa.int64()),
                          ("meta", pa.string()), ("label_seconds", pa.float64()), ("call_seconds", pa.float64())])
QUARANTINE_SCHEMA = pa.schema([("source", pa.string()), ("line", pa.int64()), ("id", pa.string()),
                               ("reason", pa.string()), ("raw", pa.string())])


@dataclass(frozen=True)
class LabelConfig:
    """Settings of a labeling run (laptop-friendly defaults)."""

    model: str
    inputs: tuple[str, ...]
    output: str
    format: str = "auto"             # text | jsonl | csv | parquet | auto (by extension)
    text_field: str = "text"         # JSONL / CSV / Parquet column holding the text
    id_field: str | None = None      # column copied to `id`
    include_text: bool = False
    include_probs: bool = False
    max_chars: int = 100_000         # longer texts are quarantined
    unit_bytes: int = 32 << 20       # plain text / JSONL unit size (resume granularity)
    batch_size: int = 2048           # rows per labeling call (sorted by length inside)
    model_batch_size: int = 32       # windows per forward pass (32 is fastest for 1-thread actors)
    concurrency: int = 0             # labeling actors; 0: auto (see actor_layout)
    num_cpus: float = 0.5            # per actor (fractional: leaves CPUs for the read tasks)
    num_gpus: float = 0.0            # per actor
    tf_threads: int = 0              # per actor; 0: the cluster's CPUs / actors
    precision: str = "auto"          # auto | float32 | bfloat16 | float16
    prune: bool = False              # delete the labels of inputs no longer given
    verify: bool = False             # checksum every committed part before reusing its unit (sizes always)
    progress: bool = True

    def __post_init__(self):

        if self.format not in INPUT_FORMATS + ("auto",):
            raise ValueError(f"format={self.format!r}: must be one of {INPUT_FORMATS + ('auto',)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: must be one of {PRECISIONS}")
        for name in ("max_chars", "unit_bytes", "batch_size", "model_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 1")
        for name in ("concurrency", "num_cpus", "num_gpus", "tf_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 0")
        if not self.inputs:
            raise ValueError("inputs: give at least one file, directory or glob")

    def read_options(self) -> ReadOptions:
        return ReadOptions(self.format, self.text_field, self.id_field, self.max_chars)


def load_label_config(path: str | None = None, overrides: list[str] | None = None,
                      given: dict | None = None) -> LabelConfig:
    """A :class:`LabelConfig` from a YAML file (optional), dotted ``key=value`` overrides, then
    ``given`` values (command-line flags), in that order of precedence. ``unit_bytes`` may be a
    size such as ``32MiB``.

    Raises:
        FileNotFoundError, ValueError: one line naming the file or field.
    """

    data = read_yaml(path, "label config") if path else {}
    data = apply_overrides(data, list(overrides or []))
    data.update(given or {})
    if isinstance(data.get("unit_bytes"), str):
        data["unit_bytes"] = parse_size(data["unit_bytes"])
    return build(LabelConfig, data)


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
        return [i for i in self.fs.get_file_info(pafs.FileSelector(directory)) if i.type == pafs.FileType.File]

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
                        found.add(name[len("unit="):])
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
            parts = info.path[len(base):].strip("/").split("/")
            if info.path.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in parts):
                return True  # a file readers see (they skip names starting with _ or .)
        return False


# ---- labeling actors ------------------------------------------------------------------------
class LabelWriter:
    """Ray Data actor: loads the model once; labels a batch of rows and writes each unit's slice
    of it (labeled and quarantined rows) as its own Parquet files; returns one stats row per
    unit of the batch."""

    def __init__(self, model: list, output: str, include_text: bool, include_probs: bool,
                 model_batch_size: int, tf_threads: int, precision: str):
        """``model``: ``[ref]``, the object-store reference of :func:`modeldir.pack`'s files (in a
        list, so Ray hands it over as a reference): the actor never opens the driver's disk."""

        import ray

        from albert_ray.inference.labeler import Labeler

        configure_tf(tf_threads)
        folder = modeldir.unpack(ray.get(model[0]))
        try:
            self.labeler = Labeler.from_dir(folder, batch_size=model_batch_size, precision=precision)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.spec, self.task = self.labeler.spec, task_for(self.labeler.spec)
        self.store = OutputStore(output)
        self.include_text, self.include_probs = include_text, include_probs
        self.schema = output_schema(self.spec, include_text, include_probs)
        self.version = self.spec.extra.get("version", __version__)

    def __call__(self, batch: pa.Table) -> pa.Table:
        began = time.perf_counter()
        ends = batch.filter(pc.is_valid(batch.column("meta")))
        rows = batch.filter(pc.is_null(batch.column("meta")))
        good_mask = pc.is_null(rows.column("reason"))
        good, bad = rows.filter(good_mask), rows.filter(pc.invert(good_mask))
        labeled = self._label(good)
        label_seconds = time.perf_counter() - began
        stats = {uid: self._write_unit(uid, rows, good, labeled, bad)
                 for uid in pc.unique(rows.column("unit")).to_pylist()}
        for uid, meta in zip(ends.column("unit").to_pylist(), ends.column("meta").to_pylist()):
            stats.setdefault(uid, {})["meta"] = meta
        call_seconds = time.perf_counter() - began
        return pa.Table.from_pylist([{"unit": uid, "precision": self.labeler.precision, "rows": 0, "out": 0, "bad": 0,
                                      "parts": "[]", "quarantine_parts": "[]", "sizes": "{}", "quarantine_sizes": "{}",
                                      "counts": "{}", "reasons": "{}",
                                      "text_bytes": 0, "label_seconds": 0.0 if i else label_seconds,
                                      "call_seconds": 0.0 if i else call_seconds, **s}
                                     for i, (uid, s) in enumerate(stats.items())], schema=STATS_SCHEMA)

    def _write_unit(self, uid: str, rows: pa.Table, good: pa.Table, labeled: pa.Table, bad: pa.Table) -> dict:
        """Write one unit's slice of the batch (files named by its first and last row, so a
        retried call rewrites the same files); its stats."""
        mine = rows.filter(pc.equal(rows.column("unit"), uid))
        name = f"part-{pc.min(mine.column('row')).as_py():010d}-{pc.max(mine.column('row')).as_py():010d}.parquet"
        s = {"rows": mine.num_rows}
        good_mask = pc.equal(good.column("unit"), uid)
        out = labeled.filter(good_mask)
        if out.num_rows:
            info = self.store.write_table(out, f"{self.store.unit_dir(uid)}/{name}")
            s.update(out=out.num_rows, parts=json.dumps([name]), sizes=json.dumps({name: info}),
                     counts=json.dumps(_value_counts(self.task.counted_values(out))),
                     text_bytes=pc.sum(pc.binary_length(good.filter(good_mask).column("text"))).as_py() or 0)
        quarantined = bad.filter(pc.equal(bad.column("unit"), uid))
        if quarantined.num_rows:
            table = quarantined.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
            info = self.store.write_table(table, f"{self.store.unit_dir(uid, quarantine=True)}/{name}")
            reasons = Counter(map(reason_kind, table.column("reason").to_pylist()))
            s.update(bad=table.num_rows, quarantine_parts=json.dumps([name]), reasons=json.dumps(reasons),
                     quarantine_sizes=json.dumps({name: info}))
        return s

    def _label(self, good: pa.Table) -> pa.Table:
        texts = good.column("text").to_pylist()
        results = self.labeler.predict(texts)
        cols = {"source": good.column("source"), "line": good.column("line"), "id": good.column("id")}
        if self.include_text:
            cols["text"] = good.column("text")
        cols.update(self.task.output_columns(results, self.spec, self.include_probs))
        cols["model_name"] = [self.spec.name] * len(texts)
        cols["model_version"] = [self.version] * len(texts)
        return pa.table(cols, schema=self.schema)


def _value_counts(values: pa.Array) -> dict:
    return {item["values"]: item["counts"] for item in pc.value_counts(values).to_pylist() if item["values"] is not None}


# ---- planning and resume (driver) -----------------------------------------------------------
@dataclass
class Plan:
    files: list[InputFile]
    units: list[Unit]
    settings: dict
    complete: dict[str, dict] = field(default_factory=dict)   # uid -> record
    reused: int = 0                                            # units complete before this run

    def todo(self) -> list[Unit]:
        return [u for u in self.units if u.uid not in self.complete]

    def read_tasks(self) -> list[str]:
        """One read task per file with pending units (JSON)."""
        by_file: dict[str, list[Unit]] = defaultdict(list)
        for u in self.units:
            by_file[u.path].append(u)
        tasks = []
        for f in self.files:
            units = by_file[f.path]
            if all(u.uid in self.complete for u in units):
                continue
            tasks.append(json.dumps(read_task(f, units, self.complete)))
        return tasks

    def todo_bytes(self) -> int:
        sizes = {f.path: f.size for f in self.files}
        return sum(sizes[u.path] if u.stop < 0 or u.fmt == "parquet" else u.stop - u.start for u in self.todo())


def model_location(cfg: LabelConfig) -> str:
    """The model as recorded: an absolute local path, or the URI without credentials."""
    return without_credentials(cfg.model) if is_uri(cfg.model) else str(Path(cfg.model).resolve())


def _settings(cfg: LabelConfig, model_checksum: str) -> dict:
    """What a unit's labels depend on besides its input: a change relabels every unit."""
    return {"model": model_location(cfg), "model_checksum": model_checksum,
            "read": asdict(cfg.read_options()), "include_text": cfg.include_text, "include_probs": cfg.include_probs}


def check_output_location(cfg: LabelConfig, files: list[InputFile]) -> None:
    """Refuse an output folder inside an input folder (a later run would read its own Parquet)
    or one that holds inputs.

    Raises:
        ValueError: one line naming both.
    """
    if "://" in cfg.output:
        return
    out = os.path.abspath(cfg.output)
    for root in input_roots(cfg.inputs):
        if out == root or out.startswith(root.rstrip(os.sep) + os.sep):
            raise ValueError(f"output {cfg.output} lies inside input folder {root}: a later run would read its own "
                             f"Parquet and quarantine files as input; choose an output folder outside the inputs")
    inside = [f.path for f in files if f.path.startswith(out.rstrip(os.sep) + os.sep)]
    if inside:
        raise ValueError(f"input {inside[0]} lies inside output {cfg.output}; choose an output folder outside the inputs")


def plan_run(cfg: LabelConfig, store: OutputStore, model_checksum: str | None = None) -> Plan:
    """Plan units from the inputs' metadata, reuse committed units, delete everything else.

    Raises:
        ValueError: the output holds labels of inputs not given now (and ``prune`` is off).
    """
    files = expand_inputs(cfg.inputs, cfg.format)
    check_output_location(cfg, files)
    if model_checksum is None:
        from albert_ray import modeldir
        model_checksum = modeldir.checksum(modeldir.pack(cfg.model))
    plan = Plan(files, plan_units(files, cfg.unit_bytes), _settings(cfg, model_checksum))
    planned = {u.uid for u in plan.units}
    records = store.records()
    given = {f.path for f in files}
    gone = sorted({r["source"] for r in records.values() if r["source"] not in given})
    if gone and not cfg.prune:
        raise ValueError(f"output {without_credentials(cfg.output)} holds labels of {len(gone)} input file(s) not "
                         f"given now "
                         f"(e.g. {gone[0]}): give them again, choose another output, or pass --prune to delete them")
    for uid, rec in records.items():
        if uid in planned and rec.get("settings") == plan.settings and _parts_intact(store, rec, cfg.verify):
            plan.complete[uid] = rec
    plan.reused = len(plan.complete)
    stale = (set(records) | store.unit_dirs()) - set(plan.complete)
    for uid in sorted(stale):
        store.delete_unit(uid)
    changed = {records[u]["source"] for u in stale if u in records and u not in planned and records[u]["source"] in given}
    if changed:
        log.info("%d input file(s) changed since they were labeled; relabeling them (e.g. %s)", len(changed),
                 sorted(changed)[0])
    if gone:
        log.info("pruned the labels of %d input file(s) not given now", len(gone))
    return plan


def _parts_intact(store: OutputStore, rec: dict, verify: bool = False) -> bool:
    """Every part the record lists is there with the size it was written with (and, with
    ``verify``, the same crc32): a truncated or damaged part makes its unit run again."""
    for quarantine, key in ((False, "parts"), (True, "quarantine_parts")):
        written = rec.get("quarantine_sizes" if quarantine else "sizes")
        if written is None:
            return False  # a record from before sizes were kept: nothing vouches for its parts
        folder = store.unit_dir(rec["uid"], quarantine)
        present = store.sizes(folder)
        for name in rec.get(key, []):
            if name not in present or [present[name]] != written.get(name, [None])[:1]:
                log.warning("unit %s: part %s is %s; labeling the unit again", rec["uid"], f"{folder}/{name}",
                            "missing" if name not in present else
                            f"{present[name]} bytes, not the {written.get(name, [0])[0]} committed")
                return False
            if verify and store.crc32(f"{folder}/{name}") != written[name][1]:
                log.warning("unit %s: part %s fails its checksum; labeling the unit again", rec["uid"],
                            f"{folder}/{name}")
                return False
    return True


# ---- the job --------------------------------------------------------------------------------
class _Committer:
    """Collects the actors' stats per unit and commits a unit once all its rows are written."""

    def __init__(self, plan: Plan, store: OutputStore, progress):
        self.plan, self.store, self.progress = plan, store, progress
        self.units = {u.uid: u for u in plan.todo()}
        self.pending: dict[str, dict] = defaultdict(lambda: {"rows": 0, "out": 0, "bad": 0, "parts": [],
                                                             "quarantine_parts": [], "sizes": {},
                                                             "quarantine_sizes": {}, "counts": Counter(),
                                                             "reasons": Counter(), "precision": set(), "meta": None})
        self.committed = 0
        self.rows_done = 0
        self.label_seconds = self.call_seconds = 0.0

    def add(self, stats: pa.Table) -> None:
        for s in stats.to_pylist():
            self.label_seconds += s["label_seconds"]
            self.call_seconds += s["call_seconds"]
            p = self.pending[s["unit"]]
            for key in ("rows", "out", "bad"):
                p[key] += s[key]
            p["parts"] += json.loads(s["parts"])
            p["quarantine_parts"] += json.loads(s["quarantine_parts"])
            p["sizes"].update(json.loads(s["sizes"]))
            p["quarantine_sizes"].update(json.loads(s["quarantine_sizes"]))
            p["counts"].update(json.loads(s["counts"]))
            p["reasons"].update(json.loads(s["reasons"]))
            p["precision"].add(s["precision"])
            if s["meta"]:
                p["meta"] = json.loads(s["meta"])
            self.rows_done += s["rows"]
            self.progress.update(s["rows"], s["text_bytes"])
            if p["meta"] is not None and p["rows"] >= p["meta"]["rows"]:
                self._commit(s["unit"], self.pending.pop(s["unit"]))

    def _commit(self, uid: str, p: dict) -> None:
        unit, meta = self.units[uid], p["meta"]
        if p["rows"] != meta["rows"] or p["rows"] != p["out"] + p["bad"]:
            raise RuntimeError(f"unit {uid} of {unit.path}: {meta['rows']} rows read, {p['rows']} labeled "
                               f"({p['out']} out + {p['bad']} quarantined)")
        self.store.keep_only(uid, set(p["parts"]), quarantine=False)
        self.store.keep_only(uid, set(p["quarantine_parts"]), quarantine=True)
        record = {"uid": uid, "source": unit.path, "format": unit.fmt, "identity": unit.identity,
                  "start": unit.start, "stop": unit.stop, "settings": self.plan.settings,
                  "rows_in": meta["rows"], "rows_out": p["out"], "rows_quarantined": p["bad"],
                  "first_line": meta.get("first_line"), "lines": meta.get("lines"),
                  "next_offset": meta.get("next_offset"), "next_line": meta.get("next_line"),
                  "parts": sorted(p["parts"]), "quarantine_parts": sorted(p["quarantine_parts"]),
                  "sizes": p["sizes"], "quarantine_sizes": p["quarantine_sizes"],
                  "counts": dict(p["counts"]), "reasons": dict(p["reasons"]),
                  "precision": sorted(p["precision"]), "committed_at": time.time()}
        self.store.write_json(record, UNITS_DIR, f"{uid}.json")
        self.plan.complete[uid] = record
        self.committed += 1
        self.progress.unit_done(meta["rows"], unit)


def label_corpus(cfg: LabelConfig, address: str | None = None) -> dict:
    """Label every row of the inputs; return (and write) the manifest. The model directory, the
    inputs and the output are checked before Ray is attached (``init_ray(address)``; a no-op
    when Ray is already initialised).

    Raises:
        FileNotFoundError: no input.
        ModelDirError: a missing, damaged or inconsistent model directory.
        ValueError: an output inside the inputs, or labels of inputs not given (see ``prune``).
        Interrupted: Ctrl-C; committed units are kept for the next run.
        RuntimeError: rows in != rows out + rows quarantined.
    """

    began = time.time()
    spec, _ = modeldir.check(cfg.model)
    model_files = modeldir.pack(cfg.model)  # to every actor through the object store, wherever it runs
    store = OutputStore(cfg.output)
    plan = plan_run(cfg, store, modeldir.checksum(model_files))
    plan_seconds = time.time() - began
    init_ray(address, dashboard=False)
    todo = plan.todo()
    log.info("labeling %d files: %d units, %d already complete, %d to do (%.1f MB) with %s (%s)", len(plan.files),
             len(plan.units), len(plan.complete), len(todo), plan.todo_bytes() / 1e6, without_credentials(cfg.model), spec.task)
    if todo:
        _require_visible_everywhere(cfg, plan, store)
    progress = RowProgress(plan.todo_bytes(), enabled=cfg.progress)
    committer = _Committer(plan, store, progress)
    labeled_began = time.time()
    first_commit = _label_units(cfg, plan, todo, committer, progress, began, model_files)
    labeled_seconds = time.time() - labeled_began
    timings = {"plan_seconds": round(plan_seconds, 3), "first_commit_seconds": round(first_commit, 2),
               "actor_label_seconds": round(committer.label_seconds, 2),
               "actor_write_seconds": round(committer.call_seconds - committer.label_seconds, 2),
               "pipeline_seconds": round(labeled_seconds, 2)}
    return _finish(cfg, spec, store, plan, committer.rows_done, time.time() - began, labeled_seconds, timings)


def _require_visible_everywhere(cfg: LabelConfig, plan: Plan, store: OutputStore) -> None:
    """Local inputs and a local output on a multi-node cluster: every node that runs tasks must
    see them (the output through a marker the driver writes), checked before any read task."""

    if alive_nodes() < 2:
        return
    require_visible("input", "read tasks open it", [(f.path, f.size) for f in plan.files if not is_uri(f.path)])
    if store.local:
        require_visible_folder("output", "labeling actors write into it", store.root)


def _label_units(cfg: LabelConfig, plan: Plan, todo: list, committer: _Committer, progress, began: float,
                 model_files: dict) -> float:
    """Label and commit the units still to do (``todo``); the seconds from ``began`` to the first
    commit. Ctrl-C raises :class:`Interrupted` (committed units stay); a unit left pending, RuntimeError."""
    first_commit = 0.0
    try:
        if todo:
            for stats in _pipeline(cfg, plan, model_files).iter_batches(batch_size=None, batch_format="pyarrow"):
                committer.add(stats)
                first_commit = first_commit or (committer.committed and time.time() - began)
    except KeyboardInterrupt:
        progress.close()
        raise Interrupted(f"interrupted: {committer.committed} of {len(todo)} units committed this run "
                          f"({len(plan.complete)} of {len(plan.units)} in all); run the same command again to "
                          f"resume") from None
    except Exception as exc:  # noqa: BLE001 - a fault of the environment is one line; anything else as it is
        progress.close()
        if isinstance(unwrapped(exc), ONE_LINE):  # an input's own line (InputUnreadable, a user error)
            raise
        fault = environment_fault(exc, f"output {without_credentials(cfg.output)}",
                                  f"{len(plan.complete)} of {len(plan.units)} units are committed and kept: "
                                  f"mend it and run the same command again to resume")
        if fault is None:
            raise
        raise fault from None
    progress.close()
    if committer.pending:
        raise RuntimeError(f"{len(committer.pending)} units were not completely labeled: "
                           f"{sorted(committer.pending)[:3]}")
    return first_commit


def _finish(cfg: LabelConfig, spec, store: OutputStore, plan: Plan, rows_done: int, seconds: float,
            labeled_seconds: float, timings: dict) -> dict:
    """Check the output reads back, write the manifest (the run's and the labeling's seconds, and
    the stages' ``timings``) and ``_summary.html``, log the totals, and check the row accounting
    (rows in = rows out + rows quarantined)."""

    _ensure_readable(store, output_schema(spec, cfg.include_text, cfg.include_probs), plan)
    manifest = _manifest(cfg, spec, plan, rows_done, seconds, labeled_seconds)
    manifest.update(timings)
    store.write_json(manifest, MANIFEST)
    store.write_bytes(label_summary_page(manifest, task_for(spec).counts_key).encode("utf-8"), SUMMARY_HTML)
    log.info("labeled: %d rows in = %d out + %d quarantined; %d units (%d reused); %.1f rows/s; manifest %s",
             manifest["rows_in"], manifest["rows_out"], manifest["rows_quarantined"], manifest["units"],
             manifest["units_reused"], manifest["rows_per_second"],
             f"{without_credentials(cfg.output).rstrip('/')}/{MANIFEST}")
    if manifest["rows_in"] != manifest["rows_out"] + manifest["rows_quarantined"]:
        raise RuntimeError(f"row accounting failed: {manifest['rows_in']} in != {manifest['rows_out']} out + "
                           f"{manifest['rows_quarantined']} quarantined")
    return manifest


def _pipeline(cfg: LabelConfig, plan: Plan, model_files: dict):
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False      # ours counts rows and commits (albert_ray.runtime.progress)
    # Ray Data merges a task's outputs up to this size, and an actor call gets at least a
    # whole block: blocks of about the reader's table size keep calls near batch_size rows,
    # spread over the actors, with commits and progress as they go
    ctx.target_max_block_size = BLOCK_BYTES
    # reading is ~1000x faster than labeling: cap what the read tasks may buffer ahead of the
    # actors, so memory does not grow with the corpus (1M rows: +18 % over 100k without a cap)
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=READ_AHEAD_BYTES)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    actors, threads = actor_layout(cfg, ray.cluster_resources())
    opts, block_rows = cfg.read_options(), cfg.batch_size
    tasks = plan.read_tasks()

    def read(batch: pa.Table):
        for task in batch.column("task").to_pylist():
            yield from read_file(json.loads(task), opts, block_rows)

    rows = ray.data.from_items([{"task": t} for t in tasks], override_num_blocks=len(tasks)).map_batches(
        read, batch_size=1, batch_format="pyarrow", num_cpus=0.25)
    return rows.map_batches(
        LabelWriter, batch_size=cfg.batch_size, batch_format="pyarrow",
        fn_constructor_kwargs=dict(model=[ray.put(model_files)], output=cfg.output,
                                   include_text=cfg.include_text, include_probs=cfg.include_probs,
                                   model_batch_size=cfg.model_batch_size, tf_threads=threads, precision=cfg.precision),
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus or None)


def actor_layout(cfg: LabelConfig, resources: dict) -> tuple[int, int]:
    """(actors, TensorFlow threads per actor).  Auto: one actor per GPU; on CPUs up to four
    actors sharing the cluster's CPUs.  Several single-threaded actors beat one actor with all
    threads on small CPUs, because tokenizing, decoding and writing (Python) then run in
    parallel too: on 2 cores, 20k rows took 39 s with 2 x 1 thread against 51 s with 1 x 2."""
    cpus = max(1, int(resources.get("CPU", os.cpu_count() or 1)))
    if cfg.concurrency:
        actors = cfg.concurrency
    elif cfg.num_gpus:
        actors = max(1, int(resources.get("GPU", 1) / cfg.num_gpus))
    else:
        actors = min(cpus, 4)
    return actors, cfg.tf_threads or max(1, cpus // actors)


def _ensure_readable(store: OutputStore, schema: pa.Schema, plan: Plan) -> None:
    """A folder with no Parquet file (every row quarantined, or none) still gets a zero-row
    file with the schema, so whole-folder reads work."""
    if not plan.units:
        return
    uid = plan.units[0].uid
    for base, sch, quarantine in ((store.root, schema, False), (store.unit_dir("x", True).rsplit("/", 1)[0],
                                                                 QUARANTINE_SCHEMA, True)):
        if not store.has_parquet(base):
            info = store.write_table(sch.empty_table(), f"{store.unit_dir(uid, quarantine)}/part-empty.parquet")
            rec = plan.complete.get(uid)
            if rec is not None:  # listed, so a resumed run keeps the unit
                rec["quarantine_parts" if quarantine else "parts"].append("part-empty.parquet")
                rec.setdefault("quarantine_sizes" if quarantine else "sizes", {})["part-empty.parquet"] = info
                store.write_json(rec, UNITS_DIR, f"{uid}.json")


def _manifest(cfg: LabelConfig, spec, plan: Plan, rows_labeled: int, seconds: float, labeled_seconds: float) -> dict:

    records = [plan.complete[u.uid] for u in plan.units if u.uid in plan.complete]
    counts, reasons, precisions = Counter(), Counter(), set()
    for r in records:
        counts.update(r["counts"])
        reasons.update(r["reasons"])
        precisions.update(r.get("precision", []))
    return {
        "model": model_location(cfg), "model_checksum": plan.settings["model_checksum"], "model_name": spec.name,
        "task": spec.task, "labels": list(spec.labels),
        "albert_ray_version": __version__, "inputs": [f.path for f in plan.files],
        "output": without_credentials(cfg.output),
        "rows_in": sum(r["rows_in"] for r in records), "rows_out": sum(r["rows_out"] for r in records),
        "rows_quarantined": sum(r["rows_quarantined"] for r in records),
        "units": len(plan.units), "units_complete": len(records), "units_reused": plan.reused,
        "rows_labeled_this_run": rows_labeled, "seconds": round(seconds, 2),
        "rows_per_second": round(rows_labeled / max(labeled_seconds, 1e-9), 1),
        "precision": sorted(precisions), "schema": str(output_schema(spec, cfg.include_text, cfg.include_probs)),
        task_for(spec).counts_key: dict(counts.most_common()),
        "quarantine_reasons": dict(reasons.most_common()),
        "config": {**asdict(cfg), "inputs": [without_credentials(i) for i in cfg.inputs],
                   "output": without_credentials(cfg.output), "model": without_credentials(cfg.model)},
    }
