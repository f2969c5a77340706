"""The labeling actor: loads the model once per actor, labels a batch of rows and writes each
unit's slice of it as Parquet (labeled and quarantined rows), one stats row per unit back to
the driver."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

import albert_ray  # noqa: F401 TF_USE_LEGACY_KERAS before TensorFlow
from albert_ray import __version__, modeldir
from albert_ray.io.corpus import (
    reason_kind,
)
from albert_ray.label.store import QUARANTINE_SCHEMA, STATS_SCHEMA, OutputStore, output_schema
from albert_ray.runtime.attach import (
    configure_tf,
)
from albert_ray.tasks.registry import task_for

log = logging.getLogger(__name__)


# ---- labeling actors ------------------------------------------------------------------------
class LabelWriter:
    """Ray Data actor: loads the model once; labels a batch of rows and writes each unit's slice
    of it (labeled and quarantined rows) as its own Parquet files; returns one stats row per
    unit of the batch."""

    def __init__(
        self,
        model: list,
        output: str,
        include_text: bool,
        include_probs: bool,
        model_batch_size: int,
        tf_threads: int,
        precision: str,
    ):
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
        stats = {
            uid: self._write_unit(uid, rows, good, labeled, bad)
            for uid in pc.unique(rows.column("unit")).to_pylist()
        }
        for uid, meta in zip(ends.column("unit").to_pylist(), ends.column("meta").to_pylist()):
            stats.setdefault(uid, {})["meta"] = meta
        call_seconds = time.perf_counter() - began
        return pa.Table.from_pylist(
            [
                {
                    "unit": uid,
                    "precision": self.labeler.precision,
                    "rows": 0,
                    "out": 0,
                    "bad": 0,
                    "parts": "[]",
                    "quarantine_parts": "[]",
                    "sizes": "{}",
                    "quarantine_sizes": "{}",
                    "counts": "{}",
                    "reasons": "{}",
                    "text_bytes": 0,
                    "label_seconds": 0.0 if i else label_seconds,
                    "call_seconds": 0.0 if i else call_seconds,
                    **s,
                }
                for i, (uid, s) in enumerate(stats.items())
            ],
            schema=STATS_SCHEMA,
        )

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
            s.update(
                out=out.num_rows,
                parts=json.dumps([name]),
                sizes=json.dumps({name: info}),
                counts=json.dumps(_value_counts(self.task.counted_values(out))),
                text_bytes=pc.sum(pc.binary_length(good.filter(good_mask).column("text"))).as_py() or 0,
            )
        quarantined = bad.filter(pc.equal(bad.column("unit"), uid))
        if quarantined.num_rows:
            table = quarantined.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
            info = self.store.write_table(table, f"{self.store.unit_dir(uid, quarantine=True)}/{name}")
            reasons = Counter(map(reason_kind, table.column("reason").to_pylist()))
            s.update(
                bad=table.num_rows,
                quarantine_parts=json.dumps([name]),
                reasons=json.dumps(reasons),
                quarantine_sizes=json.dumps({name: info}),
            )
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
    return {
        item["values"]: item["counts"]
        for item in pc.value_counts(values).to_pylist()
        if item["values"] is not None
    }
