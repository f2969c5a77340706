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

from albert_ray.spec import PRECISIONS, ModelSpec
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


PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str) -> str:
    """``auto``: bfloat16 on a GPU of compute capability >= 8 (float16 on older GPUs) and on
    CPUs with AVX512_BF16 or AMX (TF's bfloat16 matmuls run ~1.9x float32 there), else float32.

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: must be one of {PRECISIONS}")
    if precision != "auto":
        return precision
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        return "bfloat16" if capability >= (8, 0) else "float16"
    return "bfloat16" if _cpu_flags() & {"avx512_bf16", "amx_bf16"} else "float32"


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
        self.precision = "float32"
        sig = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)]
        self._forward = tf.function(lambda ids, seg: model([ids, seg], training=False), input_signature=sig)

    @classmethod
    def from_dir(cls, path: str | Path, batch_size: int = 32, precision: str = "float32") -> "Labeler":
        """Load a model directory written by :func:`save_model_dir`; needs nothing else.

        ``precision``: ``float32``, ``bfloat16`` or ``float16`` (matmuls; LayerNorm, softmax and
        the task outputs stay float32, weights are stored float32), or ``auto``
        (:func:`resolve_precision`).
        """
        from albert_ray.encoder import dtype_policy

        path = Path(path)
        for name in (SPEC_FILE, WEIGHTS_FILE, VOCAB_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} is not a model directory: {name} is missing")
        spec = ModelSpec.load(path / SPEC_FILE)
        precision = resolve_precision(precision)
        with dtype_policy(PRECISION_POLICIES[precision]):
            model = build_task_model(spec)
        model.load_weights(str(path / WEIGHTS_FILE))
        labeler = cls(model, spec, Vocab.from_file(path / VOCAB_FILE), batch_size)
        labeler.precision = precision
        return labeler

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
