"""The masked-LM pre-training model: the encoder with an MLM head (and ALBERT's optional
sentence-order head), their losses, and the heads' published checkpoint names.

The MLM head's output layer is the token embedding, transposed (as in BERT and ALBERT), and is
evaluated at the masked positions only: over a 21,128-word vocabulary it would otherwise
dominate the step. The folder :func:`save_pretrained` writes is the encoder in its own published
layout plus ``cls/predictions/...``, readable by the original code and by fine-tuning here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from albert_ray.model.encoder_config import EncoderConfig
from albert_ray.model.tokenization import Vocab

HEAD_PREFIX = "cls/predictions"


@dataclass(frozen=True)
class OutputVocabulary:
    """The vocabulary ids the MLM softmax runs over, and the batch labels as indices into them.

    Why: a corpus holds a fraction of a 21,128-word vocabulary (4,670 ids in the benchmark's 1.8M
    characters), and a label is always a token of the corpus. A softmax over those ids alone
    computes the same targets' probabilities against the tokens that can occur, and the output
    layer, its cross-entropy and their gradients (a quarter of a step on the sample encoder) shrink
    with it. Ids outside keep their head weights as they were (zeros, or a checkpoint's)."""

    ids: np.ndarray  # sorted, int32

    @classmethod
    def of_counts(cls, counts: np.ndarray, special: np.ndarray) -> "OutputVocabulary":
        """The ids a per-id count of the corpus' tokens holds, special tokens (never labels) left out."""
        return cls(np.setdiff1d(np.flatnonzero(counts), special).astype(np.int32))

    def targets(self, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``labels`` (vocabulary ids) as indices into :attr:`ids`; padding slots (weight 0) 0.

        Raises:
            RuntimeError: a weighted label outside the ids (a bug: the ids come from every
                sequence the worker masks).
        """
        index = np.minimum(np.searchsorted(self.ids, labels), len(self.ids) - 1).astype(np.int32)
        real = weights > 0
        if not np.array_equal(self.ids[index[real]], labels[real]):
            raise RuntimeError("a masked token outside the MLM output vocabulary")
        return np.where(real, index, 0).astype(np.int32)


def build_mlm_model(
    config: EncoderConfig, sentence_order: bool = False, output: OutputVocabulary | None = None
):
    """``[token_ids, segment_ids, masked_positions] -> logits (B, P, vocab)`` (float32): the
    encoder and an MLM head whose output layer is the token embedding, transposed (as in BERT and
    ALBERT), evaluated at the masked positions only; with ``output``, over its ids only
    (``(B, P, len(output.ids))``, labels then :meth:`OutputVocabulary.targets`).
    ``sentence_order``: also ``(B, 2)`` logits of ALBERT's sentence-order head (the pooler,
    ``tanh`` of a dense layer on ``[CLS]``, then a dense layer), as a second output."""
    from tensorflow import keras

    from albert_ray.model.encoder import build_encoder

    encoder = build_encoder(config, name="encoder")
    positions = keras.layers.Input((None,), dtype="int32", name="Input-Masked-Positions")
    head = MaskedLMHead(config, encoder, name="MLM-Head", output=output)
    logits = head([encoder.outputs[0], positions])
    if sentence_order:
        pooled = keras.layers.Dense(config.hidden_size, activation="tanh", name="SOP-Pooler")(
            encoder.outputs[1]
        )
        order = keras.layers.Dense(2, name="SOP-Output", dtype="float32")(pooled)
        return keras.Model(encoder.inputs + [positions], [logits, order], name="mlm_sop")
    return keras.Model(encoder.inputs + [positions], logits, name="mlm")


def head_variables(model) -> dict:
    """The pre-training heads' variables under their published names: the MLM head, and the
    pooler and sentence-order output when the model has them (kernels of ``output_weights``
    are stored ``[2, H]``, as in BERT's checkpoints)."""
    out = dict(model.get_layer("MLM-Head").variables_by_name())
    names = {layer.name for layer in model.layers}
    if "SOP-Pooler" in names:
        pooler, order = model.get_layer("SOP-Pooler"), model.get_layer("SOP-Output")
        out.update(
            {
                "bert/pooler/dense/kernel": pooler.kernel,
                "bert/pooler/dense/bias": pooler.bias,
                "cls/seq_relationship/output_weights": order.kernel,
                "cls/seq_relationship/output_bias": order.bias,
            }
        )
    return out


_TRANSPOSED = {"cls/seq_relationship/output_weights"}


def MaskedLMHead(
    config: EncoderConfig,
    encoder,
    name: str,  # noqa: N802  (a layer factory)
    output: OutputVocabulary | None = None,
):
    """The MLM head layer: transform (dense + activation + LayerNorm) at the width the layout's
    published head has, then logits against the token embedding (brightmart projects back
    through ``word_embeddings_2`` first), plus ``output_bias``; with ``output``, against its rows only."""
    import tensorflow as tf
    from tensorflow import keras

    from albert_ray.model import fused
    from albert_ray.model.encoder import LN_EPSILON, activation_for

    width = config.embedding_size if config.layout == "albert_google" else config.hidden_size
    rows = None if output is None else tf.constant(output.ids)
    size = config.vocab_size if output is None else len(output.ids)

    def restricted(table):
        return table if rows is None else tf.gather(table, rows)

    class _Head(keras.layers.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight(name="transform_kernel", shape=(config.hidden_size, width))
            self.bias = self.add_weight(name="transform_bias", shape=(width,), initializer="zeros")

            def float32(name, size, initializer):  # read in float32 under a mixed policy too
                return self.add_weight(
                    name=name, shape=(size,), initializer=initializer, experimental_autocast=False
                )

            self.gamma, self.beta = float32("gamma", width, "ones"), float32("beta", width, "zeros")
            self.output_bias = float32("output_bias", config.vocab_size, "zeros")
            self.act = activation_for(config)

        # the encoder's own variables, reached through functions so Keras does not track them twice
        @staticmethod
        def embedding():
            return encoder.get_layer("Embedding-Token").weights[0]

        @staticmethod
        def projection():
            return encoder.get_layer("Embedding-Token-Projection").weights[0]

        def call(self, inputs):
            # 2-D matmuls on the (B * P) gathered rows: against a 3-D input the tied embedding's
            # gradient would be a (B, vocab, E) batch summed afterwards
            sequence, positions = inputs
            compute = self.compute_dtype  # bfloat16 under mixed_bfloat16
            x = tf.gather(sequence, positions, batch_dims=1)  # (B, P, H)
            x = tf.reshape(tf.cast(x, compute), [-1, config.hidden_size])  # (B * P, H)
            x = self.act(
                tf.nn.bias_add(tf.matmul(x, tf.cast(self.kernel, compute)), tf.cast(self.bias, compute))
            )
            x = tf.cast(
                fused.layer_norm(x, self.gamma, self.beta, LN_EPSILON), compute
            )  # LayerNorm in float32
            if config.layout == "albert_brightmart":
                x = tf.matmul(x, tf.cast(self.projection(), compute), transpose_b=True)  # H -> E
            logits = tf.matmul(x, tf.cast(restricted(self.embedding()), compute), transpose_b=True)
            logits = fused.logits_with_bias(logits, restricted(self.output_bias))  # float32: softmax and loss
            return tf.reshape(logits, tf.concat([tf.shape(positions), [size]], axis=0))

        def variables_by_name(self) -> dict:
            p = HEAD_PREFIX
            return {
                f"{p}/transform/dense/kernel": self.kernel,
                f"{p}/transform/dense/bias": self.bias,
                f"{p}/transform/LayerNorm/gamma": self.gamma,
                f"{p}/transform/LayerNorm/beta": self.beta,
                f"{p}/output_bias": self.output_bias,
            }

    return _Head(name=name, autocast=False)  # the global policy's compute dtype; variables float32


def save_pretrained(
    folder: str | Path, model, config: EncoderConfig, vocab: Vocab, summary: dict | None = None
) -> Path:
    """The encoder in its layout's published checkpoint names, the MLM head under
    ``cls/predictions/...`` (and the sentence-order head under ``bert/pooler`` and
    ``cls/seq_relationship``), the config JSON and ``vocab.txt``."""
    from albert_ray.model.checkpoint import encoder_variables, write_variables

    folder = Path(folder)
    variables = encoder_variables(model, config)
    variables.update(
        {k: v.numpy().T if k in _TRANSPOSED else v.numpy() for k, v in head_variables(model).items()}
    )
    write_variables(folder / "model.ckpt", variables)
    name = "bert_config.json" if config.layout == "bert" else "albert_config.json"
    (folder / name).write_text(json.dumps(config.to_dict(), indent=2))
    vocab.save(folder / "vocab.txt")
    if summary is not None:
        (folder / "pretrain.json").write_text(json.dumps(summary, indent=2))
    return folder


def load_head(model, checkpoint: str) -> bool:
    """The pre-training heads from a checkpoint that has them (continued pre-training); False if
    it lacks one (that head starts new)."""
    import tensorflow as tf

    from albert_ray.model.checkpoint import read_float32, resolve_checkpoint

    reader = tf.train.load_checkpoint(resolve_checkpoint(checkpoint))
    names = reader.get_variable_to_shape_map()
    head = head_variables(model)
    for n, var in head.items():
        if n in names:
            value = read_float32(reader, n)
            var.assign(value.T if n in _TRANSPOSED else value)
    return all(n in names for n in head)


def order_loss(logits, labels, weights):
    """Sentence-order cross-entropy and correct predictions, weighted (rows with one segment: 0)."""
    import tensorflow as tf

    ce = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    correct = tf.cast(tf.equal(tf.cast(tf.argmax(logits, -1), tf.int32), labels), tf.float32)
    return tf.reduce_sum(ce * weights), tf.reduce_sum(correct * weights), tf.reduce_sum(weights)


def masked_loss(logits, labels, weights):
    """Masked-LM cross-entropy and correct predictions, weighted (padding slots: 0)."""
    import tensorflow as tf

    from albert_ray.model import fused

    ce = fused.sparse_cross_entropy(labels, logits)
    correct = tf.cast(
        tf.equal(tf.cast(tf.argmax(logits, -1), tf.int32), labels), tf.float32
    )  # pruned in training
    return tf.reduce_sum(ce * weights), tf.reduce_sum(correct * weights), tf.reduce_sum(weights)
