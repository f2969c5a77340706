"""Bulk corpus labeling with Ray Data: read -> validate -> featurise (CPU tasks) -> predict (actor
pool, model loaded once per actor) -> decode -> Parquet, with a quarantine for bad rows, a
manifest, and resume.

Work is cut into *units* (a file, or a range of lines of a large text / JSONL file).  Outputs are
partitioned by unit (``unit=<id>/``).  A unit is complete when its output and quarantine rows
add up to its input rows; re-running with the same output skips complete units and redoes the
others after deleting their partial files, so an interrupted run finishes without duplicates or
gaps.

Output schema (``<output>/unit=<id>/*.parquet``):

* ``source`` string (file), ``line`` int64 (1-based line; record number for CSV, row for Parquet),
  ``id`` string (when ``id_field`` is given), ``text`` string (when ``include_text``);
* classify: ``label`` string, ``score`` float32, ``probs`` list<float32> (when ``include_probs``;
  order = ``labels`` in the manifest);
* multilabel: ``labels`` list<string>, ``scores`` list<float32> (scores of those labels);
* ner: ``entities`` list<struct<start int32, end int32 (exclusive), label string, text string,
  score float32>>, offsets into the original text;
* ``model_name`` string, ``model_version`` string.

The manifest is ``<output>/_manifest.json``. Quarantine (``<output>/_quarantine/unit=<id>/``): ``source``, ``line``, ``reason``, ``raw`` (up to
1,000 characters of the offending line).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from albert_ray import __version__

log = logging.getLogger(__name__)

INPUT_FORMATS = ("text", "jsonl", "csv", "parquet")
QUARANTINE_DIR = "_quarantine"
MANIFEST = "_manifest.json"  # leading "_": pandas / pyarrow / Spark skip it when reading the folder
RAW_LIMIT = 1000


@dataclass(frozen=True)
class LabelConfig:
    """Settings of a labeling run (all have laptop-friendly defaults)."""

    model: str
    inputs: tuple[str, ...]
    output: str
    format: str = "auto"             # text | jsonl | csv | parquet | auto (by extension)
    text_field: str = "text"         # JSONL / CSV / Parquet column holding the text
    id_field: str | None = None      # column copied to `id` as the row key
    include_text: bool = False
    include_probs: bool = False
    max_chars: int = 100_000         # longer texts are quarantined
    unit_lines: int = 50_000         # lines per unit of large text / JSONL files (resume granularity)
    batch_size: int = 256            # rows per prediction batch (sorted by length inside)
    model_batch_size: int = 32       # windows per forward pass
    concurrency: int = 1             # predictor actors
    num_cpus: float = 0.5            # per predictor actor (fractional: leaves CPUs for read tasks)
    num_gpus: float = 0.0            # per predictor actor
    tf_threads: int = 0              # per actor; 0: the node's CPUs / concurrency

    def __post_init__(self):
        if self.format not in INPUT_FORMATS + ("auto",):
            raise ValueError(f"format={self.format!r}: must be one of {INPUT_FORMATS + ('auto',)}")
        for name in ("max_chars", "unit_lines", "batch_size", "model_batch_size", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 1")
        if not self.inputs:
            raise ValueError("inputs: give at least one file, directory or glob")


@dataclass(frozen=True)
class Unit:
    uid: str
    path: str          # URI or local path
    fmt: str
    start: int         # first line / record / row (0-based), inclusive
    stop: int          # exclusive; -1: to the end
    rows: int          # rows in this unit


# ---- inputs -------------------------------------------------------------------------------
def _fs_and_path(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def expand_inputs(inputs) -> list[str]:
    """Files named by paths, directories (recursively) and globs, local or by URI.

    Raises:
        FileNotFoundError: an input matches nothing.
    """
    import glob

    files: list[str] = []
    for item in inputs:
        if "://" in item:
            fs, path = _fs_and_path(item)
            info = fs.get_file_info(path)
            scheme = item.split("://", 1)[0]
            if info.type == pafs.FileType.Directory:
                sel = fs.get_file_info(pafs.FileSelector(path, recursive=True))
                found = sorted(f"{scheme}://{f.path}" for f in sel if f.type == pafs.FileType.File
                               and not Path(f.path).name.startswith((".", "_")))
            elif info.type == pafs.FileType.File:
                found = [item]
            else:
                found = []
        elif os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
        else:
            found = sorted(glob.glob(item, recursive=True)) if any(c in item for c in "*?[") else (
                [item] if os.path.isfile(item) else [])
        if not found:
            raise FileNotFoundError(f"input {item!r} matches no file")
        files.extend(found)
    return files


def detect_input_format(path: str, default: str = "auto") -> str:
    if default != "auto":
        return default
    name = path.lower().removesuffix(".gz")
    for ext, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".parquet", "parquet")):
        if name.endswith(ext):
            return fmt
    return "text"


def _open_binary(path: str):
    """A binary stream of the file, decompressed when it ends in .gz (any pyarrow filesystem)."""
    fs, p = _fs_and_path(path)
    return fs.open_input_stream(p, compression="gzip" if path.endswith(".gz") else None)


def _raw_lines(path: str) -> Iterator[bytes]:
    with _open_binary(path) as f:
        rest = b""
        while chunk := f.read(1 << 22):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            yield from lines
        if rest:
            yield rest


def _count_records(path: str, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        fs, p = _fs_and_path(path)
        with fs.open_input_file(p) as f:
            return pq.ParquetFile(f).metadata.num_rows
    if fmt == "csv":
        return sum(1 for _ in _iter_csv(path, "text", None, 0, -1))
    return sum(1 for _ in _raw_lines(path))


def plan_units(files: list[str], fmt: str, unit_lines: int) -> list[Unit]:
    """Cut the inputs into units; ids are stable for the same file and range."""
    units = []
    for path in files:
        f = detect_input_format(path, fmt)
        total = _count_records(path, f)
        step = unit_lines if f in ("text", "jsonl") else max(total, 1)
        for start in range(0, max(total, 1), step):
            stop = min(total, start + step)
            uid = hashlib.sha1(f"{path}|{start}|{stop}".encode()).hexdigest()[:16]
            units.append(Unit(uid, path, f, start, stop, stop - start))
    return units


# ---- reading and validation (Ray Data CPU tasks) -------------------------------------------
def _iter_lines(path: str, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    for i, line in enumerate(_raw_lines(path)):
        if i < start:
            continue
        if 0 <= stop <= i:
            break
        yield i, line.rstrip(b"\r")


def _iter_csv(path: str, text_field: str, id_field: str | None, start: int, stop: int):
    text = (line.decode("utf-8", "replace") + "\n" for line in _raw_lines(path))
    reader = csv.DictReader(text)
    if True:
        for i, rec in enumerate(reader):
            if i < start:
                continue
            if 0 <= stop <= i:
                break
            yield i, reader.line_num, rec


def read_unit(unit: dict, text_field: str, id_field: str | None, max_chars: int) -> list[dict]:
    """All rows of one unit, each ``{source, line, id, text, reason, raw}`` (``reason`` set for
    rows that go to quarantine)."""
    rows = []

    def add(line, text=None, rid=None, reason=None, raw=""):
        if reason is None:
            if text is None:
                reason = f"missing field {text_field!r}"
            elif not isinstance(text, str):
                reason = f"field {text_field!r} is not a string"
            elif not text.strip():
                reason = "empty text"
            elif len(text) > max_chars:
                reason = f"text of {len(text)} characters exceeds max_chars={max_chars}"
        rows.append({"source": unit["path"], "line": line, "id": None if rid is None else str(rid),
                     "text": text if reason is None else None, "reason": reason,
                     "raw": (raw if reason else "")[:RAW_LIMIT]})

    fmt = unit["fmt"]
    if fmt in ("text", "jsonl"):
        for i, raw in _iter_lines(unit["path"], unit["start"], unit["stop"]):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                add(i + 1, reason=f"not valid UTF-8 (byte {exc.start})", raw=raw.decode("utf-8", "replace"))
                continue
            if fmt == "text":
                add(i + 1, text=line, raw=line)
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                add(i + 1, reason=f"not valid JSON ({exc.msg})", raw=line)
                continue
            if not isinstance(rec, dict):
                add(i + 1, reason="not a JSON object", raw=line)
                continue
            add(i + 1, text=rec.get(text_field), rid=rec.get(id_field) if id_field else None, raw=line)
    elif fmt == "csv":
        for i, _, rec in _iter_csv(unit["path"], text_field, id_field, unit["start"], unit["stop"]):
            text = rec.get(text_field)
            reason = "not valid UTF-8" if text and "\ufffd" in text else None
            add(i + 1, text=text, rid=rec.get(id_field) if id_field else None, reason=reason,
                raw=json.dumps(rec, ensure_ascii=False))
    else:
        import pyarrow.parquet as pq

        fs, p = _fs_and_path(unit["path"])
        with fs.open_input_file(p) as f:
            table = pq.read_table(f)
        if text_field not in table.column_names:
            for i in range(table.num_rows):
                add(i + 1, reason=f"missing field {text_field!r}")
        else:
            texts = table.column(text_field).to_pylist()
            ids = table.column(id_field).to_pylist() if id_field and id_field in table.column_names else [None] * len(texts)
            for i, (text, rid) in enumerate(zip(texts, ids)):
                add(i + 1, text=text, rid=rid, raw=str(text))
    for r in rows:
        r["unit"] = unit["uid"]
    return rows


# ---- prediction (callable class: model loaded once per actor) ------------------------------
class Predictor:
    """Ray Data actor: loads the model directory once, labels batches of rows."""

    def __init__(self, model_dir: str, model_batch_size: int, tf_threads: int, include_text: bool,
                 include_probs: bool):
        import albert_ray  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

        if tf_threads > 0:
            import tensorflow as tf

            try:
                tf.config.threading.set_intra_op_parallelism_threads(tf_threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass
        from albert_ray.predict import Labeler

        self.labeler = Labeler.from_dir(model_dir, batch_size=model_batch_size)
        self.include_text, self.include_probs = include_text, include_probs
        self.schema = output_schema(self.labeler.spec.task, include_text, include_probs)
        self.model_name = self.labeler.spec.name
        self.model_version = json.loads((Path(model_dir) / "model.json").read_text()).get("extra", {}).get(
            "version", __version__)

    def __call__(self, batch: dict) -> pa.Table:
        texts = list(batch["text"])
        results = self.labeler.predict(texts)
        cols: dict[str, list] = {"source": list(batch["source"]), "line": [int(x) for x in batch["line"]],
                                 "id": [x if isinstance(x, str) else None for x in batch["id"]],
                                 "unit": list(batch["unit"])}
        if self.include_text:
            cols["text"] = texts
        task = self.labeler.spec.task
        if task == "classify":
            cols["label"] = [r["label"] for r in results]
            cols["score"] = [r["score"] for r in results]
            if self.include_probs:
                cols["probs"] = [list(r["probs"].values()) for r in results]
        elif task == "multilabel":
            cols["labels"] = [r["labels"] for r in results]
            cols["scores"] = [[r["scores"][x] for x in r["labels"]] for r in results]
            if self.include_probs:
                cols["probs"] = [list(r["scores"].values()) for r in results]
        else:
            cols["entities"] = [r["entities"] for r in results]
        cols["model_name"] = [self.model_name] * len(texts)
        cols["model_version"] = [self.model_version] * len(texts)
        return pa.Table.from_pydict(cols, schema=self.schema)


def output_schema(task: str, include_text: bool = False, include_probs: bool = False) -> pa.Schema:
    """The Parquet schema of labeled rows for a task (``unit`` becomes the partition directory)."""
    fields = [("source", pa.string()), ("line", pa.int64()), ("id", pa.string()), ("unit", pa.string())]
    if include_text:
        fields.append(("text", pa.string()))
    if task == "classify":
        fields += [("label", pa.string()), ("score", pa.float32())]
        if include_probs:
            fields.append(("probs", pa.list_(pa.float32())))
    elif task == "multilabel":
        fields += [("labels", pa.list_(pa.string())), ("scores", pa.list_(pa.float32()))]
        if include_probs:
            fields.append(("probs", pa.list_(pa.float32())))
    else:
        entity = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("label", pa.string()),
                            ("text", pa.string()), ("score", pa.float32())])
        fields.append(("entities", pa.list_(entity)))
    fields += [("model_name", pa.string()), ("model_version", pa.string())]
    return pa.schema(fields)


QUARANTINE_SCHEMA = pa.schema([("source", pa.string()), ("line", pa.int64()), ("id", pa.string()),
                               ("unit", pa.string()), ("reason", pa.string()), ("raw", pa.string())])


# ---- resume bookkeeping ---------------------------------------------------------------------
def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _count_partition(output: str, sub: str | None, uid: str) -> int | None:
    """Rows in one unit's partition, or ``None`` if a file is unreadable (an interrupted write)."""
    import pyarrow.parquet as pq

    fs, root = _fs_and_path(output)
    d = _join(root, *(x for x in (sub, f"unit={uid}") if x))
    if fs.get_file_info(d).type != pafs.FileType.Directory:
        return 0
    total = 0
    for info in fs.get_file_info(pafs.FileSelector(d)):
        if not info.path.endswith(".parquet"):
            continue
        try:
            with fs.open_input_file(info.path) as f:
                total += pq.ParquetFile(f).metadata.num_rows
        except (OSError, pa.ArrowInvalid):
            return None
    return total


def _delete_partition(output: str, sub: str | None, uid: str) -> None:
    fs, root = _fs_and_path(output)
    d = _join(root, *(x for x in (sub, f"unit={uid}") if x))
    if fs.get_file_info(d).type == pafs.FileType.Directory:
        fs.delete_dir(d)


def pending_units(units: list[Unit], output: str) -> tuple[list[Unit], list[Unit]]:
    """Split units into (complete, to do); partial outputs of the latter are deleted."""
    done, todo = [], []
    for u in units:
        out, bad = _count_partition(output, None, u.uid), _count_partition(output, QUARANTINE_DIR, u.uid)
        if out is not None and bad is not None and out + bad == u.rows and u.rows > 0:
            done.append(u)
        else:
            _delete_partition(output, None, u.uid)
            _delete_partition(output, QUARANTINE_DIR, u.uid)
            todo.append(u)
    return done, todo


# ---- the job --------------------------------------------------------------------------------
def label_corpus(cfg: LabelConfig) -> dict:
    """Label every row of the inputs; return (and write) the manifest.

    Raises:
        FileNotFoundError: no model directory or no input.
        RuntimeError: rows in != rows out + rows quarantined at the end.
    """

    from albert_ray.spec import ModelSpec

    began = time.time()
    spec = ModelSpec.load(Path(cfg.model) / "model.json") if Path(cfg.model, "model.json").is_file() else None
    if spec is None:
        raise FileNotFoundError(f"{cfg.model} is not a model directory: model.json is missing")
    from albert_ray.runtime import alive_nodes

    if "://" not in cfg.output and alive_nodes() > 1:
        log.warning("output %s is a local path on a %d-node cluster: it must be a filesystem every node mounts "
                    "(or use s3://...); otherwise each node writes its part to its own disk", cfg.output, alive_nodes())
    files = expand_inputs(cfg.inputs)
    units = plan_units(files, cfg.format, cfg.unit_lines)
    done, todo = pending_units(units, cfg.output)
    rows_in = sum(u.rows for u in units)
    log.info("labeling %d rows in %d files (%d units; %d already complete, %d to do) with %s (%s)",
             rows_in, len(files), len(units), len(done), len(todo), cfg.model, spec.task)
    if todo:
        _run_pipeline(cfg, todo, spec.task)
    # count what is on disk: the manifest reports the truth, resumed or not
    rows_out = sum(_count_partition(cfg.output, None, u.uid) or 0 for u in units)
    rows_bad = sum(_count_partition(cfg.output, QUARANTINE_DIR, u.uid) or 0 for u in units)
    seconds = time.time() - began
    manifest = {
        "model": str(cfg.model), "model_name": spec.name, "task": spec.task, "labels": list(spec.labels),
        "albert_ray_version": __version__, "inputs": files, "output": cfg.output,
        "rows_in": rows_in, "rows_out": rows_out, "rows_quarantined": rows_bad,
        "units": len(units), "units_resumed_complete": len(done),
        "seconds": round(seconds, 2), "rows_per_second": round((sum(u.rows for u in todo)) / max(seconds, 1e-9), 1),
        "schema": str(output_schema(spec.task, cfg.include_text, cfg.include_probs)),
        "config": asdict(cfg),
    }
    manifest.update(_summaries(cfg.output, spec.task))
    fs, root = _fs_and_path(cfg.output)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(_join(root, MANIFEST)) as f:
        f.write(json.dumps(manifest, ensure_ascii=False, indent=2).encode())
    log.info("labeled: %d rows in = %d out + %d quarantined; %.1f rows/s; manifest %s", rows_in, rows_out, rows_bad,
             manifest["rows_per_second"], _join(cfg.output, MANIFEST))
    if rows_in != rows_out + rows_bad:
        raise RuntimeError(f"row accounting failed: {rows_in} in != {rows_out} out + {rows_bad} quarantined")
    return manifest


def _run_pipeline(cfg: LabelConfig, units: list[Unit], task: str) -> None:
    import ray

    cpus = os.cpu_count() or 1
    threads = cfg.tf_threads or max(1, cpus // cfg.concurrency)
    read_args = dict(text_field=cfg.text_field, id_field=cfg.id_field, max_chars=cfg.max_chars)
    units_ds = ray.data.from_items([asdict(u) for u in units], override_num_blocks=len(units))
    rows = units_ds.flat_map(lambda u: read_unit(u, **read_args), num_cpus=0.25)
    good = rows.filter(lambda r: r["reason"] is None, num_cpus=0.25).select_columns(["source", "line", "id", "unit", "text"])
    labeled = good.map_batches(
        Predictor,
        fn_constructor_kwargs=dict(model_dir=str(Path(cfg.model).resolve()), model_batch_size=cfg.model_batch_size,
                                   tf_threads=threads, include_text=cfg.include_text, include_probs=cfg.include_probs),
        batch_size=cfg.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
        num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus or None,
    )
    labeled.write_parquet(cfg.output, partition_cols=["unit"])
    # the quarantine branch reads again (cheap: no model) instead of holding the corpus
    bad = rows.filter(lambda r: r["reason"] is not None, num_cpus=0.25).select_columns(
        ["source", "line", "id", "unit", "reason", "raw"])
    bad.write_parquet(_join(cfg.output, QUARANTINE_DIR), partition_cols=["unit"])


def _summaries(output: str, task: str) -> dict:
    """Label / entity counts and quarantine reasons, counted batch by batch with Arrow compute
    from the written Parquet (the driver never holds the output)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    fs, root = _fs_and_path(output)

    def counts(path, column, values) -> Counter:
        total: Counter = Counter()
        try:
            data = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive",
                              ignore_prefixes=[QUARANTINE_DIR, "_", "."])
            for batch in data.to_batches(columns=[column]):
                for item in pc.value_counts(values(batch.column(0))).to_pylist():
                    if item["values"] is not None:
                        total[item["values"]] += item["counts"]
        except (FileNotFoundError, pa.ArrowInvalid):
            pass
        return total

    out: dict = {}
    if task == "classify":
        out["label_counts"] = dict(counts(root, "label", lambda c: c).most_common())
    elif task == "multilabel":
        out["label_counts"] = dict(counts(root, "labels", pc.list_flatten).most_common())
    else:
        out["entity_counts"] = dict(counts(root, "entities",
                                           lambda c: pc.struct_field(pc.list_flatten(c), "label")).most_common())
    reasons = counts(_join(root, QUARANTINE_DIR), "reason", lambda c: c)
    grouped: Counter = Counter()
    for reason, n in reasons.items():  # "not valid JSON (Expecting ...)" -> "not valid JSON"
        grouped[reason.split(" (")[0]] += n
    out["quarantine_reasons"] = dict(grouped.most_common())
    return out
