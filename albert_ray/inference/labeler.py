"""Batched inference from an in-memory model or a model directory.

Texts are cut into windows, windows are sorted by length and padded per batch (about 2x faster
than padding everything to ``max_len`` on real short-sentence data), run through a
``tf.function`` with a fixed signature (no retracing on new lengths, no tf.data autotune stall),
then decoded per text by the task.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf
from tensorflow import keras
from tqdm import tqdm

import albert_ray  # noqa: F401
from albert_ray import modeldir
from albert_ray.io.batching import pad_batch
from albert_ray.model.tokenization import CharTokenizer, Vocab
from albert_ray.runtime import hardware
from albert_ray.runtime.progress import bars_wanted
from albert_ray.spec import PRECISIONS, ModelSpec
from albert_ray.tasks.registry import task_for

log = logging.getLogger(__name__)


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
    return "bfloat16" if hardware.has_bf16() else "float32"


class Labeler:
    """Predicts task outputs for raw texts.

    Args:
        model: a task model from :func:`albert_ray.tasks.registry.build_task_model`.
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
        self.forward_passes = 0  # model calls so far (a server counts how well it batches)
        self.windows_run = 0
        sig = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)]
        self._forward = tf.function(lambda ids, seg: model([ids, seg], training=False), input_signature=sig)

    @classmethod
    def from_dir(cls, path: str | Path, batch_size: int = 32, precision: str = "float32") -> "Labeler":
        """Load a model directory (:mod:`albert_ray.modeldir`); needs nothing else.

        ``precision``: ``float32``, ``bfloat16`` or ``float16`` (matmuls; LayerNorm, softmax and
        the task outputs stay float32, weights are stored float32), or ``auto``
        (:func:`resolve_precision`).

        Raises:
            ModelDirError: a missing, damaged or inconsistent model directory (one line).
        """
        precision = resolve_precision(precision)
        model, spec, vocab = modeldir.load(path, precision)
        labeler = cls(model, spec, vocab, batch_size)
        labeler.precision = precision
        return labeler

    def forward(self, token_rows: Sequence[Sequence[int]], progress: str | None = None) -> list[np.ndarray]:
        """Model outputs per row (sequence outputs trimmed to the row's length), in input order;
        with ``progress`` (a description), a bar over the windows when this process is on a terminal."""

        order = sorted(range(len(token_rows)), key=lambda i: len(token_rows[i]))
        out: list[np.ndarray | None] = [None] * len(token_rows)
        bar = tqdm(
            total=len(order),
            desc=progress,
            unit=" windows",
            leave=False,
            disable=progress is None or not bars_wanted(),
        )
        for b in range(0, len(order), self.batch_size):
            bar.update(min(self.batch_size, len(order) - b))
            idx = order[b : b + self.batch_size]
            ids = pad_batch([token_rows[i] for i in idx])
            result = self._forward(tf.constant(ids), tf.zeros_like(ids)).numpy()
            self.forward_passes, self.windows_run = self.forward_passes + 1, self.windows_run + len(idx)
            for j, i in enumerate(idx):
                out[i] = result[j, : len(token_rows[i])] if result.ndim == 3 else result[j]
        bar.close()
        return out  # type: ignore[return-value]

    def predict(self, texts: Iterable[str], progress: str | None = None) -> list[dict]:
        """Predictions per text: ``label``/``score``/``probs``, ``labels``/``scores`` or ``entities``."""
        texts = list(texts)
        windows = [self.task.windows(self.tokenizer, t, self.spec) for t in texts]
        flat = [w.token_ids for ws in windows for w in ws]
        outputs = self.forward(flat, progress) if flat else []
        return self.task.decode_batch(texts, windows, outputs, self.spec, self.model)
