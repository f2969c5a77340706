"""``albert-ray export``: a TensorFlow SavedModel whose ``serving_default`` takes raw texts.

Everything :class:`albert_ray.inference.labeler.Labeler` does runs in the graph, so loading needs plain
TensorFlow only (no albert_ray, keras-bert or custom objects; ``tf.saved_model.load`` or
TF-Serving):

* tokenization: ``tf.strings.unicode_decode``, then one static hash table from code point to
  token id, computed here by :class:`CharTokenizer` itself for every code point (so the
  normalisation and ``[UNK]`` rules are the tokenizer's), with -1 for characters that are never
  tokens (whitespace, control, format);
* the task's windows (:meth:`Task.windows`), padded, through the model's functions;
* the task's outputs (:meth:`Task.serving_outputs`): label / score / probs; labels over the
  saved threshold; or CRF Viterbi paths, marginal scores, spans, and windows stitched with the
  rule of :func:`albert_ray.tasks.label_encoding.stitch_windows` — as character offsets into the input.

Outputs are dense and batch-major (padded where a text has several results); see docs/models.md.
Written here because neither keras-bert nor TensorFlow exports a CRF tagger that serves raw text.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from albert_ray import modeldir, paths
from albert_ray.model.tokenization import CharTokenizer, Vocab, is_token_char
from albert_ray.spec import ModelSpec
from albert_ray.tasks.registry import task_for

log = logging.getLogger(__name__)


def char_table(vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """``(code points, token ids)`` for every code point whose id is not ``[UNK]`` (-1: never a token)."""
    tokenizer = CharTokenizer(vocab)
    keys, values = [], []
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:  # surrogates: unicode_decode never yields them
            continue
        ch = chr(cp)
        token = tokenizer.char_id(ch) if is_token_char(ch) else -1
        if token != vocab.unk_id:
            keys.append(cp)
            values.append(token)
    return np.array(keys, np.int32), np.array(values, np.int32)


class Graph:
    """The in-graph pieces a task's serving outputs are made of (one batch of texts)."""

    def __init__(self, module: "Exported", texts):
        self.m, self.texts = module, texts
        cps = tf.strings.unicode_decode(texts, "UTF-8", errors="replace")
        ids = tf.ragged.map_flat_values(module.table.lookup, cps)
        keep = ids >= 0
        self.token_ids = tf.ragged.boolean_mask(ids, keep)  # (B, n) ragged
        self.token_chars = tf.ragged.boolean_mask(tf.ragged.range(cps.row_lengths()), keep)

    def windows(self, stride: int, head_only: bool):
        """Window rows ``(text, first token, tokens)`` as in :meth:`CharTokenizer.windows`, then
        padded ``[CLS] ... [SEP]`` ids and their character index (-1 for special and padding)."""
        body = self.m.spec.body_len
        n = tf.cast(self.token_ids.row_lengths(), tf.int32)
        k = tf.where(n <= body, 1, 1 + (n - body + stride - 1) // stride)
        if head_only:
            k = tf.ones_like(k)
        text = tf.repeat(tf.range(tf.shape(n)[0]), k)
        first = tf.ragged.range(k).flat_values * stride
        size = tf.minimum(body, tf.gather(n, text) - first)
        width = tf.reduce_max(size) + 2
        pos = tf.range(width)[None, :] - 1  # token slot of each column
        inside = (pos >= 0) & (pos < size[:, None])
        flat = tf.cast(tf.gather(self.token_ids.row_starts(), text), tf.int32)[:, None] + first[:, None] + pos
        flat = tf.where(inside, flat, 0)
        ids = tf.where(inside, tf.gather(self.token_ids.flat_values, flat), 0)
        ids = tf.where(pos == -1, self.m.vocab_ids["cls"], ids)
        ids = tf.where(pos == size[:, None], self.m.vocab_ids["sep"], ids)
        chars = tf.where(inside, tf.cast(tf.gather(self.token_chars.flat_values, flat), tf.int32), -1)
        return text, size + 2, ids, chars

    def forward(self, ids):
        return self.m.forward(ids)

    def per_text_mean(self, values, text):
        """Mean of window rows per text (``values`` (W, C)) -> (B, C)."""
        b = tf.shape(self.texts)[0]
        return tf.math.unsorted_segment_mean(values, text, b)


class Exported(tf.Module):
    """The saved module: the model's variables, the character table, the label names, and the
    ``serve`` function."""

    def __init__(self, model, spec: ModelSpec, vocab: Vocab):
        super().__init__()
        self.spec, self.task = spec, task_for(spec)
        self.weights = list(model.variables)  # tracked: the functions below capture them
        self._model = model
        keys, values = char_table(vocab)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, values), default_value=vocab.unk_id
        )
        self.vocab_ids = {"cls": vocab.cls_id, "sep": vocab.sep_id}
        self.label_names = tf.Variable(list(spec.labels), trainable=False, name="label_names")
        self.extra = self.task.serving_state(model, spec)  # e.g. the CRF's transitions, tracked

    def forward(self, ids):
        return tf.cast(self._model([ids, tf.zeros_like(ids)], training=False), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    def serve(self, texts):
        return self.task.serving_outputs(Graph(self, texts), self.spec)


def export(model_dir: str | Path, output: str | Path) -> Path:
    """Write the SavedModel of a model directory to ``output`` (plus ``export.json``: what it holds)."""
    model, spec, vocab = modeldir.load(model_dir, "float32")
    module = Exported(model, spec, vocab)
    output = Path(output)
    tf.saved_model.save(module, str(output), signatures={"serving_default": module.serve})
    outputs = {k: v.dtype.name for k, v in module.serve.get_concrete_function().structured_outputs.items()}
    (output / "export.json").write_text(
        json.dumps(
            {
                "model_dir": paths.without_credentials(model_dir),
                "task": spec.task,
                "labels": list(spec.labels),
                "outputs": outputs,
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    log.info("exported %s to %s (serving_default: texts -> %s)", model_dir, output, ", ".join(outputs))
    return output
