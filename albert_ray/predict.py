"""Batched inference from an in-memory model or a model directory.

Texts are cut into windows, windows are sorted by length and padded per batch (about 2x faster
than padding everything to ``max_len`` on real short-sentence data), run through a
``tf.function`` with a fixed signature (no retracing on new lengths, no tf.data autotune stall),
then decoded per text by the task.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

import albert_ray  # noqa: F401
import tensorflow as tf
from tensorflow import keras

from albert_ray.spec import ModelSpec
from albert_ray.tasks import build_task_model, task_for
from albert_ray.tokenization import CharTokenizer, Vocab

log = logging.getLogger(__name__)

SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.weights.h5"
VOCAB_FILE = "vocab.txt"
JOB_FILE = "job.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.txt"


def pad_batch(rows: Sequence[Sequence[int]], value: int = 0, multiple: int = 1) -> np.ndarray:
    """Right-pad int sequences to the longest one (rounded up to ``multiple``)."""
    width = max(len(r) for r in rows)
    width = -(-width // multiple) * multiple
    out = np.full((len(rows), width), value, dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


class Labeler:
    """Predicts task outputs for raw texts.

    Args:
        model: a task model from :func:`albert_ray.tasks.build_task_model`.
        spec: its specification.
        vocab: the vocabulary it was trained with.
        batch_size: windows per forward pass.
    """

    def __init__(self, model: keras.Model, spec: ModelSpec, vocab: Vocab, batch_size: int = 32):
        self.model, self.spec, self.vocab = model, spec, vocab
        self.task = task_for(spec)
        self.tokenizer = CharTokenizer(vocab)
        self.batch_size = batch_size
        sig = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)]
        self._forward = tf.function(lambda ids, seg: model([ids, seg], training=False), input_signature=sig)

    @classmethod
    def from_dir(cls, path: str | Path, batch_size: int = 32) -> "Labeler":
        """Load a model directory written by :func:`save_model_dir`; needs nothing else."""
        path = Path(path)
        for name in (SPEC_FILE, WEIGHTS_FILE, VOCAB_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} is not a model directory: {name} is missing")
        spec = ModelSpec.load(path / SPEC_FILE)
        model = build_task_model(spec)
        model.load_weights(str(path / WEIGHTS_FILE))
        return cls(model, spec, Vocab.from_file(path / VOCAB_FILE), batch_size)

    def forward(self, token_rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Model outputs per row (sequence outputs trimmed to the row's length), in input order."""
        order = sorted(range(len(token_rows)), key=lambda i: len(token_rows[i]))
        out: list[np.ndarray | None] = [None] * len(token_rows)
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            ids = pad_batch([token_rows[i] for i in idx])
            result = self._forward(tf.constant(ids), tf.zeros_like(ids)).numpy()
            for j, i in enumerate(idx):
                out[i] = result[j, : len(token_rows[i])] if result.ndim == 3 else result[j]
        return out  # type: ignore[return-value]

    def predict(self, texts: Iterable[str]) -> list[dict]:
        """Predictions per text: ``label``/``score``/``probs``, ``labels``/``scores`` or ``entities``."""
        texts = list(texts)
        windows = [self.task.windows(self.tokenizer, t, self.spec) for t in texts]
        flat = [w.token_ids for ws in windows for w in ws]
        outputs = self.forward(flat) if flat else []
        return self.task.decode_batch(texts, windows, outputs, self.spec, self.model)


def save_model_dir(path: str | Path, model: keras.Model, spec: ModelSpec, vocab: Vocab,
                   job: dict | None = None) -> Path:
    """Write weights, spec (encoder config, labels, head settings), vocab and job config."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(path / WEIGHTS_FILE))
    spec.save(path / SPEC_FILE)
    vocab.save(path / VOCAB_FILE)
    if job is not None:
        (path / JOB_FILE).write_text(json.dumps(job, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    return path
