"""Tasks as a registry (classify / multilabel / ner): head, loss, training targets, decoding,
reports, reader options and bulk-labeling output. Nothing outside this module asks which task it
is dealing with; a new task is one :class:`Task` subclass passed to :func:`register_task`.

TensorFlow is imported inside the methods that build or run models, so that validating a config
(which asks the registry for task names) does not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from albert_ray.io.batching import pad_batch
from albert_ray.io.training_files import Example
from albert_ray.reports import metrics
from albert_ray.tasks.label_encoding import (
    entity_tags,
    multi_hot,
    spans_to_tags,
    stitch_windows,
    tags_to_spans,
    token_spans_to_char_spans,
)

if TYPE_CHECKING:  # spec.py asks this registry for task names: no import back at run time
    from albert_ray.spec import ModelSpec
import dataclasses

from albert_ray.model.tokenization import CharTokenizer, Encoding
from albert_ray.reports.page import confusion_plot, entity_types_plot


class Task:
    """Base: sentence-level tasks on the [CLS] vector."""

    name = ""

    # ---- model --------------------------------------------------------------------------
    def num_outputs(self, spec: ModelSpec) -> int:
        return len(spec.labels)

    def head(self, spec: ModelSpec, sequence, cls):
        """The head's output tensor on the encoder's sequence output and [CLS] vector."""
        raise NotImplementedError

    def head_shapes(self, spec: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
        """``(what, shape)`` of weights the head must have: lets a model directory be checked
        against its spec without building the model."""
        return [(f"{self.name} output kernel", (spec.encoder.hidden_size, len(spec.labels)))]

    def loss(self, model):
        """A per-example loss ``(y_true, y_pred) -> (B,)``."""
        raise NotImplementedError

    def target_signature(self, spec: ModelSpec):
        """``tf.TensorSpec`` of a batch of targets (for a retrace-free training step)."""
        import tensorflow as tf

        return tf.TensorSpec([None], tf.int32)

    def pad_targets(self, targets: list) -> np.ndarray:
        return np.asarray(targets, dtype=np.int32)

    # ---- data ---------------------------------------------------------------------------
    def read_options(self, scheme: str) -> dict:
        """Keyword arguments of :func:`albert_ray.io.training_files.read_examples` for this task's files."""
        return {"scheme": scheme}

    def label_vocab(self, examples: Sequence[Example]) -> tuple[str, ...]:
        raise NotImplementedError

    def windows(self, tokenizer: CharTokenizer, text: str, spec: ModelSpec) -> list[Encoding]:
        """Windows a text is predicted on: the head (reference behaviour) or every chunk."""
        if spec.truncation == "chunks":
            return tokenizer.windows(text, spec.max_len, stride=spec.body_len)
        return tokenizer.windows(text, spec.max_len, stride=spec.body_len)[:1]

    def training_windows(
        self, tokenizer: CharTokenizer, example: Example, spec: ModelSpec
    ) -> list[tuple[list[int], object]]:
        """``(token_ids, target)`` pairs; sentence tasks train on the head window."""
        enc = self.windows(tokenizer, example.text, spec)[0]
        return [(enc.token_ids, self.target(example, spec))]

    def target(self, example: Example, spec: ModelSpec):
        raise NotImplementedError

    # ---- decoding and reports -----------------------------------------------------------
    def decode(
        self, text: str, windows: list[Encoding], outputs: list[np.ndarray], spec: ModelSpec, model
    ) -> dict:
        raise NotImplementedError

    def decode_batch(
        self,
        texts: Sequence[str],
        windows: Sequence[list[Encoding]],
        outputs: list[np.ndarray],
        spec: ModelSpec,
        model,
    ) -> list[dict]:
        """Decode many texts; ``outputs`` are the model outputs of all windows, text after text."""
        results, k = [], 0
        for text, ws in zip(texts, windows):
            results.append(self.decode(text, ws, outputs[k : k + len(ws)], spec, model))
            k += len(ws)
        return results

    def report(
        self, examples: Sequence[Example], predictions: Sequence[dict], spec: ModelSpec
    ) -> tuple[str, dict]:
        raise NotImplementedError

    def dev_score(self, report: dict) -> float:
        """The number early stopping and checkpoint ranking maximise."""
        raise NotImplementedError

    # ---- serving (albert_ray.inference.export) -----------------------------------------------------
    def serving_state(self, model, spec: ModelSpec) -> dict:
        """Variables the exported graph needs besides the model's (tracked by the SavedModel)."""
        return {}

    def serving_outputs(self, g, spec: ModelSpec) -> dict:
        """The exported ``serving_default`` outputs for a batch of texts
        (``g``: :class:`albert_ray.inference.export.Graph`)."""
        raise NotImplementedError

    def plots(self, folder, examples, predictions, report: dict, spec: ModelSpec) -> list:
        """The task's own plots (PNG paths) for ``report.html``, beside the per-label bars."""
        return []

    # ---- bulk labeling output -----------------------------------------------------------
    counts_key = "label_counts"  # the manifest's name for the counts of :meth:`counted_values`

    def output_fields(self, spec: ModelSpec, include_probs: bool) -> list[pa.Field]:
        """The task's Parquet columns."""
        raise NotImplementedError

    def output_columns(
        self, results: Sequence[dict], spec: ModelSpec, include_probs: bool
    ) -> dict[str, list]:
        """The task's columns for decoded results (same names and order as :meth:`output_fields`)."""
        raise NotImplementedError

    def counted_values(self, table: pa.Table) -> pa.Array:
        """The values the manifest counts (labels, or entity types) in an output table."""
        raise NotImplementedError

    def tune(self, spec: ModelSpec, predictions: Sequence[dict], examples: Sequence[Example]) -> ModelSpec:
        """Settings chosen on dev after training (saved with the model); none by default."""
        return spec


def sentence_vector(spec: ModelSpec, sequence, cls):
    """[CLS] (reference) or the masked mean of the token vectors, then the head's dropout."""
    from tensorflow import keras

    x = cls if spec.pooling == "cls" else keras.layers.GlobalAveragePooling1D(name="Head-MeanPool")(sequence)
    return keras.layers.Dropout(spec.dropout, name="Head-Dropout")(x) if spec.dropout else x


class ClassifyTask(Task):
    name = "classify"

    def head(self, spec, sequence, cls):
        from tensorflow import keras

        x = sentence_vector(spec, sequence, cls)
        return keras.layers.Dense(
            len(spec.labels), activation="softmax", name="Head-Softmax", dtype="float32"
        )(x)  # float32 probabilities under mixed precision

    def loss(self, model):
        from tensorflow import keras

        return keras.losses.SparseCategoricalCrossentropy(reduction=keras.losses.Reduction.NONE)

    def label_vocab(self, examples):
        return tuple(sorted({e.label for e in examples if e.label is not None}))

    def target(self, example, spec):
        try:
            return spec.labels.index(example.label)
        except ValueError:
            raise ValueError(
                f"{example.source}: label {example.label!r} is not one of the {len(spec.labels)} "
                f"training labels"
            ) from None

    def decode(self, text, windows, outputs, spec, model):
        probs = np.mean(np.stack(outputs), axis=0)
        best = int(probs.argmax())
        return {
            "label": spec.labels[best],
            "score": float(probs[best]),
            "probs": {label: float(p) for label, p in zip(spec.labels, probs)},
        }

    def report(self, examples, predictions, spec):
        return metrics.classification_reports([e.label for e in examples], [p["label"] for p in predictions])

    def dev_score(self, report):
        return report["accuracy"]

    def serving_outputs(self, g, spec):
        """``label`` (B,), ``score`` (B,), ``probs`` (B, C) in the order of the labels."""
        import tensorflow as tf

        text, _, ids, _ = g.windows(spec.body_len, head_only=spec.truncation != "chunks")
        probs = g.per_text_mean(g.forward(ids), text)
        return {
            "label": tf.gather(g.m.label_names, tf.argmax(probs, 1)),
            "score": tf.reduce_max(probs, 1),
            "probs": probs,
        }

    def plots(self, folder, examples, predictions, report, spec):
        return [
            confusion_plot(
                folder, [e.label for e in examples], [p["label"] for p in predictions], spec.labels
            )
        ]

    def output_fields(self, spec, include_probs):
        fields = [pa.field("label", pa.string()), pa.field("score", pa.float32())]
        return fields + ([pa.field("probs", pa.list_(pa.float32()))] if include_probs else [])

    def output_columns(self, results, spec, include_probs):
        cols = {"label": [r["label"] for r in results], "score": [r["score"] for r in results]}
        if include_probs:  # in the order of spec.labels (the manifest's "labels")
            cols["probs"] = [[r["probs"][x] for x in spec.labels] for r in results]
        return cols

    def counted_values(self, table):
        return table.column("label").combine_chunks()


class MultiLabelTask(ClassifyTask):
    name = "multilabel"

    def head(self, spec, sequence, cls):
        from tensorflow import keras

        x = sentence_vector(spec, sequence, cls)
        return keras.layers.Dense(
            len(spec.labels), activation="sigmoid", name="Head-Sigmoid", dtype="float32"
        )(x)

    def loss(self, model):
        from tensorflow import keras

        return keras.losses.BinaryCrossentropy(reduction=keras.losses.Reduction.NONE)

    def read_options(self, scheme):
        return {"scheme": scheme, "multilabel": True}  # CSV label columns hold label lists

    def label_vocab(self, examples):
        return tuple(sorted({label for e in examples for label in (e.labels or ())}))

    def target_signature(self, spec):
        import tensorflow as tf

        return tf.TensorSpec([None, len(spec.labels)], tf.float32)

    def pad_targets(self, targets):
        return np.asarray(targets, dtype=np.float32)

    def target(self, example, spec):
        try:
            return np.array(multi_hot(example.labels or (), spec.labels), dtype=np.float32)
        except ValueError as exc:
            raise ValueError(f"{example.source}: {exc}") from None

    def decode(self, text, windows, outputs, spec, model):
        probs = np.mean(np.stack(outputs), axis=0)
        chosen = [label for label, p in zip(spec.labels, probs) if p >= spec.threshold]
        return {"labels": chosen, "scores": {label: float(p) for label, p in zip(spec.labels, probs)}}

    def tune(self, spec, predictions, examples):
        """Pick the decision threshold with the best dev micro-F1."""

        gold = np.array([multi_hot([x for x in e.labels if x in spec.labels], spec.labels) for e in examples])
        probs = np.array([[p["scores"][label] for label in spec.labels] for p in predictions])
        threshold, f1 = metrics.best_threshold(gold, probs)
        return dataclasses.replace(
            spec, threshold=threshold, extra={**spec.extra, "threshold_dev_micro_f1": f1}
        )

    def plots(self, folder, examples, predictions, report, spec):
        return []  # per-label bars only: a confusion matrix needs one label per example

    def serving_outputs(self, g, spec):
        """``labels`` (B, C): those over the threshold, in label order, then ""; ``num_labels``
        (B,); ``scores`` (B, C) in the order of the labels."""
        import tensorflow as tf

        text, _, ids, _ = g.windows(spec.body_len, head_only=spec.truncation != "chunks")
        probs = g.per_text_mean(g.forward(ids), text)
        chosen = probs >= spec.threshold
        names = tf.ragged.boolean_mask(
            tf.broadcast_to(g.m.label_names.read_value()[None], tf.shape(probs)), chosen
        )
        return {
            "labels": names.to_tensor("", shape=tf.shape(probs)),
            "num_labels": tf.cast(names.row_lengths(), tf.int32),
            "scores": probs,
        }

    def report(self, examples, predictions, spec):
        gold = np.array([multi_hot([x for x in e.labels if x in spec.labels], spec.labels) for e in examples])
        pred = np.array([multi_hot(p["labels"], spec.labels) for p in predictions])
        return metrics.multilabel_reports(gold, pred, spec.labels)

    def dev_score(self, report):
        return report["micro avg"]["f1-score"]

    def output_fields(self, spec, include_probs):
        fields = [pa.field("labels", pa.list_(pa.string())), pa.field("scores", pa.list_(pa.float32()))]
        return fields + ([pa.field("probs", pa.list_(pa.float32()))] if include_probs else [])

    def output_columns(self, results, spec, include_probs):
        cols = {
            "labels": [r["labels"] for r in results],
            "scores": [[r["scores"][x] for x in r["labels"]] for r in results],
        }
        if include_probs:
            cols["probs"] = [[r["scores"][x] for x in spec.labels] for r in results]
        return cols

    def counted_values(self, table):
        return pa.compute.list_flatten(table.column("labels")).combine_chunks()


ENTITY_TYPE = pa.struct(
    [
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("label", pa.string()),
        ("text", pa.string()),
        ("score", pa.float32()),
    ]
)


class NerTask(Task):
    name = "ner"

    def num_outputs(self, spec):
        return len(entity_tags(spec.labels, spec.scheme))

    def head(self, spec, sequence, cls):
        from tensorflow import keras

        from albert_ray.tasks.crf import CRF

        x = keras.layers.Dropout(spec.dropout, name="Head-Dropout")(sequence) if spec.dropout else sequence
        if spec.bilstm_units:
            x = keras.layers.Bidirectional(
                keras.layers.LSTM(spec.bilstm_units, return_sequences=True), name="Head-BiLSTM"
            )(x)
        # float32 emissions: the CRF decodes on differences of these scores (bfloat16 flipped ~1 % of entities)
        x = keras.layers.Dense(self.num_outputs(spec), name="Head-Emissions", dtype="float32")(x)
        return CRF(self.num_outputs(spec), name="CRF", dtype="float32")(
            x
        )  # float32 scores under mixed precision

    def head_shapes(self, spec):
        tags = self.num_outputs(spec)
        width = 2 * spec.bilstm_units if spec.bilstm_units else spec.encoder.hidden_size
        return [("CRF transition matrix", (tags, tags)), ("emission kernel", (width, tags))]

    @staticmethod
    def crf(model):
        """The model's CRF layer (found by type, not by name)."""
        from albert_ray.tasks.crf import CRF

        return next(layer for layer in model.layers if isinstance(layer, CRF))

    def loss(self, model):
        return self.crf(model).loss

    def label_vocab(self, examples):
        return tuple(sorted({s[2] for e in examples for s in (e.spans or ())}))

    def target_signature(self, spec):
        import tensorflow as tf

        return tf.TensorSpec([None, None], tf.int32)

    def pad_targets(self, targets):
        return pad_batch(targets, value=-1)  # -1 marks padding for the CRF mask

    def windows(self, tokenizer, text, spec):
        return tokenizer.windows(text, spec.max_len, stride=spec.window_stride)

    def training_windows(self, tokenizer, example, spec):
        tags = entity_tags(spec.labels, spec.scheme)
        index = {t: i for i, t in enumerate(tags)}
        unknown = {s[2] for s in example.spans or ()} - set(spec.labels)
        if unknown:
            raise ValueError(
                f"{example.source}: entity types {sorted(unknown)} are not among the training types"
            )
        char_tags = spans_to_tags(len(example.text), example.spans or (), spec.scheme)
        out = []
        for enc in self.windows(tokenizer, example.text, spec):
            out.append(
                (
                    enc.token_ids,
                    np.array([index[char_tags[c]] if c >= 0 else 0 for c in enc.char_index], dtype=np.int32),
                )
            )
        return out

    def decode(self, text, windows, outputs, spec, model):
        return self.decode_batch([text], [windows], outputs, spec, model)[0]

    def decode_batch(self, texts, windows, outputs, spec, model):
        """Viterbi paths and marginals for all windows at once, then spans per text."""
        from albert_ray.tasks.crf import marginals_batch, viterbi_batch

        transitions, start, end = self.crf(model).params()
        tags = entity_tags(spec.labels, spec.scheme)
        if not outputs:
            return [{"entities": []} for _ in texts]
        # decode in length-sorted chunks: each chunk's loops run over its own longest window,
        # not the batch's (a 2,048-row batch with one 128-token window would pad every row to 128)
        paths: list = [None] * len(outputs)
        probs: list = [None] * len(outputs)
        order = sorted(range(len(outputs)), key=lambda i: len(outputs[i]))
        for c in range(0, len(order), 256):
            idx = order[c : c + 256]
            lengths = np.array([len(outputs[i]) for i in idx])
            padded = np.zeros((len(idx), lengths.max(), len(tags)), dtype=np.float32)
            for j, i in enumerate(idx):
                padded[j, : lengths[j]] = outputs[i]
            chunk_paths = viterbi_batch(padded, lengths, transitions, start, end)
            chunk_probs = marginals_batch(padded, lengths, transitions, start, end)
            for j, i in enumerate(idx):
                paths[i], probs[i] = chunk_paths[j], chunk_probs[j]
        results, k = [], 0
        for text, ws in zip(texts, windows):
            per_window, window_chars, scores = [], [], {}
            for enc in ws:
                path, prob = paths[k], probs[k]
                k += 1
                token_spans = tags_to_spans([tags[i] for i in path], spec.scheme)
                if token_spans:  # prefix sums of the decoded tags' marginals
                    cum = [0.0] + np.cumsum(prob[np.arange(len(path)), path], dtype=np.float64).tolist()
                char_spans = []
                for ts, te, label in token_spans:
                    # span by span: a span of [CLS] / [SEP] alone maps to no characters and is dropped
                    # (zipping the two lists instead gave the next entity's score after such a span)
                    for cs in token_spans_to_char_spans([(ts, te, label)], enc.char_index):
                        char_spans.append(cs)
                        # entity score: mean marginal probability of the decoded tags over its tokens
                        scores.setdefault(cs, (cum[te] - cum[ts]) / (te - ts))
                per_window.append(char_spans)
                chars = [c for c in enc.char_index if c >= 0]
                window_chars.append((chars[0], chars[-1] + 1) if chars else (0, 0))
            spans = stitch_windows(per_window, window_chars)
            results.append(
                {
                    "entities": [
                        {
                            "start": s,
                            "end": e,
                            "label": label,
                            "text": text[s:e],
                            "score": scores.get((s, e, label), 0.0),
                        }
                        for s, e, label in spans
                    ]
                }
            )
        return results

    counts_key = "entity_counts"

    def output_fields(self, spec, include_probs):
        return [pa.field("entities", pa.list_(ENTITY_TYPE))]

    def output_columns(self, results, spec, include_probs):
        return {"entities": [r["entities"] for r in results]}

    def counted_values(self, table):
        return pa.compute.struct_field(
            pa.compute.list_flatten(table.column("entities")), "label"
        ).combine_chunks()

    def report(self, examples, predictions, spec):
        gold = [spans_to_tags(len(e.text), e.spans or (), spec.scheme) for e in examples]
        pred = [
            spans_to_tags(
                len(e.text), [(x["start"], x["end"], x["label"]) for x in p["entities"]], spec.scheme
            )
            for e, p in zip(examples, predictions)
        ]
        return metrics.ner_reports(gold, pred, spec.scheme, strict=bool(spec.extra.get("strict_eval", False)))

    def dev_score(self, report):
        return report["micro avg"]["f1-score"]

    def serving_state(self, model, spec):
        import tensorflow as tf

        return {"types": tf.Variable(sorted(set(spec.labels)), trainable=False, name="entity_types")}

    def serving_outputs(self, g, spec):
        """``num_entities`` (B,); ``starts``, ``ends`` (character offsets), ``labels``, ``texts``,
        ``scores`` (B, E), padded with -1 / "" / 0; ordered by start."""
        from albert_ray.tasks.crf_graph import entities

        crf = self.crf(g.m._model)
        return entities(
            g,
            crf.transitions,
            crf.start,
            crf.end,
            2 if spec.scheme == "BIO" else 4,
            spec.scheme == "BIOES",
            spec.window_stride,
        )

    def plots(self, folder, examples, predictions, report, spec):
        return [entity_types_plot(folder, report)]


TASK_REGISTRY: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task under ``task.name`` (the built-in ones are registered below)."""
    if not task.name:
        raise ValueError(f"{type(task).__name__}: a task needs a name")
    TASK_REGISTRY[task.name] = task
    return task


for _task in (ClassifyTask(), MultiLabelTask(), NerTask()):
    register_task(_task)


def task_names() -> tuple[str, ...]:
    return tuple(TASK_REGISTRY)


def task_for(spec_or_name) -> Task:
    name = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.task
    if name not in TASK_REGISTRY:
        raise ValueError(f"task={name!r}: must be one of {task_names()}")
    return TASK_REGISTRY[name]


def build_task_model(spec: ModelSpec, seq_len: int | None = None):
    """Pure factory: spec in, ``keras.Model`` ``[token_ids, segment_ids] -> head output`` out."""
    from tensorflow import keras

    from albert_ray.model.encoder import build_encoder

    encoder = build_encoder(spec.encoder_config(), seq_len=seq_len, dropout=spec.dropout)
    sequence, cls = encoder.outputs
    if spec.output_norm:  # the [CLS] vector is then the normalised sequence's first row
        from keras_bert.layers import Extract

        sequence = keras.layers.LayerNormalization(epsilon=1e-12, name="Head-Norm", dtype="float32")(sequence)
        cls = Extract(index=0, name="Head-Norm-CLS")(sequence)
    output = task_for(spec).head(spec, sequence, cls)
    return keras.Model(encoder.inputs, output, name=f"{spec.task}_model")
