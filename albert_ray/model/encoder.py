"""Encoders as a pure factory: :class:`EncoderConfig` in, ``keras.Model`` out.

BERT is built by keras-bert's own ``get_model``.  ALBERT is not in keras-bert, and the old
``albert.py`` loader no longer imports with keras-bert 0.89, so the two ALBERT layouts are
assembled here from keras-bert's own layers (``FeedForward``, ``LayerNormalization``,
``PositionEmbedding``, and ``MultiHeadAttention`` through a float16-safe subclass of the same
name); the shared block is one set of layers called ``num_hidden_layers`` times.

Every encoder has inputs ``[Input-Token, Input-Segment]`` (int token and segment ids; token id 0
is ``[PAD]`` and is masked) and outputs ``[sequence (B, T, H), cls (B, H)]``.  ``variable_map``
names, for each Keras layer, the checkpoint variables that fill its weights in order; the
checkpoint module reads and writes through it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings

import numpy as np
import tensorflow as tf
from keras_bert import get_model
from keras_bert.layers import Extract
from keras_layer_normalization import LayerNormalization as KerasLayerNormalization
from keras_multi_head import MultiHeadAttention as KerasMultiHeadAttention
from keras_pos_embd import PositionEmbedding
from keras_position_wise_feed_forward import FeedForward as KerasFeedForward
from tensorflow import keras

import albert_ray  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from albert_ray.model import fused
from albert_ray.model.encoder_config import EncoderConfig

log = logging.getLogger(__name__)

# keras-bert's layers call one GlorotNormal instance for several kernels and tf-keras warns; the
# encoder weights are re-initialised by `initialize_encoder` or loaded from a checkpoint anyway.
warnings.filterwarnings("ignore", message="The initializer GlorotNormal is unseeded", category=UserWarning)

# Epsilon of tf.contrib.layers.layer_norm, which every published BERT / ALBERT checkpoint used.
LN_EPSILON = 1e-12


def gelu_erf(x):
    """Exact GELU, as Google's BERT ``modeling.py`` computes it."""
    return 0.5 * x * (1.0 + tf.math.erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    """tanh-approximated GELU, as both ALBERT ``modeling.py`` files (Google and brightmart) compute it."""
    return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def activation_for(config: EncoderConfig):
    """The callable for ``hidden_act``; "gelu" follows the layout's reference implementation."""
    if config.hidden_act == "gelu":
        return gelu_erf if config.layout == "bert" else gelu_tanh
    return {
        "gelu_new": gelu_tanh,
        "relu": tf.nn.relu,
        "tanh": tf.tanh,
        "swish": tf.nn.swish,
        "linear": None,
    }[config.hidden_act]


class MultiHeadAttention(KerasMultiHeadAttention):
    """keras-multi-head's ``MultiHeadAttention`` (same weights, names and order, so checkpoint
    maps are unchanged) computing in the layer's compute dtype.

    Named like its parent on purpose: tf-keras' ``.weights.h5`` format files a layer's weights
    under its snake-cased *class* name (``layers/multi_head_attention/...``), so another name
    would make every model directory saved with the parent class unloadable.

    Written here because the inner ``ScaledDotProductAttention`` of keras-self-attention 0.51 casts
    its scale and mask to ``K.floatx()`` (float32) and fails under ``mixed_float16`` ("x and y must
    have the same dtype"); no maintained release fixes it.  Q / K / V / O run in float16 under
    mixed precision; the logits, mask and softmax run in float32 (a float16 softmax over 512
    positions loses too much).  In float32 the result is the reference computation.
    """

    def __init__(self, head_num, **kwargs):
        if kwargs.get("history_only"):
            raise ValueError(
                "MultiHeadAttention: history_only (causal) attention is not used by BERT / ALBERT encoders"
            )
        super().__init__(head_num, **kwargs)

    def call(self, inputs, mask=None, training=None):
        if isinstance(inputs, list):
            q, k, v = inputs
        else:
            q = k = v = inputs
        key_mask = mask[1] if isinstance(mask, list) else mask
        q, k, v = (
            self._project(x, w, b)
            for x, w, b in ((q, self.Wq, self.bq), (k, self.Wk, self.bk), (v, self.Wv, self.bv))
        )
        q, k, v = (self._reshape_to_batches(x, self.head_num) for x in (q, k, v))
        scores = tf.matmul(q, k, transpose_b=True)
        keep = None if key_mask is None else self._reshape_mask(key_mask, self.head_num)
        probs = attention_probs(scores, keep, 1.0 / tf.sqrt(tf.cast(tf.shape(q)[-1], tf.float32)))
        y = tf.matmul(tf.cast(probs, v.dtype), v)
        return self._project(self._reshape_from_batches(y, self.head_num), self.Wo, self.bo)

    def _project(self, x, kernel, bias):
        """``activation(x @ kernel + bias)`` as one 2-D ``matmul + bias_add`` (grappler fuses
        them into one oneDNN kernel). A 3-D ``x`` against a 2-D kernel is a broadcasting batch
        matmul, whose kernel gradient is a batch of per-row gradients summed afterwards."""
        shape = tf.shape(x)
        y = tf.matmul(tf.reshape(x, [-1, shape[-1]]), kernel)
        if bias is not None:  # None without use_bias
            y = tf.nn.bias_add(y, bias)
        if self.activation is not None:
            y = self.activation(y)
        return tf.reshape(y, tf.concat([shape[:-1], [-1]], axis=0))


def attention_probs(scores, keep, scale):
    """``softmax(scores * scale - 10000 * (1 - keep))`` over the keys, in float32; ``keep``
    ``(B * heads, keys)`` is 1 for real tokens and 0 for padding (``None``: no padding).

    Plain ops in pre-training too: one XLA pass (as :mod:`fused` gives GELU and LayerNorm) runs
    this softmax on one thread, and the pre-training step was 5-13 % slower with it
    (``benchmarks/pretrain_step_parts.py`` times both)."""
    logits = tf.cast(scores, tf.float32) * scale
    if keep is not None:
        logits -= 10000.0 * (1.0 - tf.cast(keep, tf.float32)[:, None, :])
    return tf.nn.softmax(logits, axis=-1)


class LayerNormalization(KerasLayerNormalization):
    """keras-layer-normalization's layer (same weights and class name, see
    :class:`MultiHeadAttention`); one XLA-fused pass in pre-training (:func:`fused.layer_norm`)."""

    def call(self, inputs, training=None):
        if fused.wanted(self, training) and self.scale and self.center:
            return fused.layer_norm(inputs, self.gamma, self.beta, self.epsilon)
        return super().call(inputs, training=training)


class FeedForward(KerasFeedForward):
    """keras-position-wise-feed-forward's ``FeedForward`` (same weights and class name, see
    :class:`MultiHeadAttention`) computed as 2-D ``matmul + bias_add + gelu`` so grappler fuses
    each into one oneDNN kernel.  The parent's ``K.dot`` on 3-D inputs reshapes between matmul
    and bias and nothing fuses: measured on the ALBERT-tiny shape, inference 536 -> 763 rows/s
    in bfloat16 and 412 -> 457 in float32.  ``tf.nn.gelu(approximate=True)`` is the same function
    as :func:`gelu_tanh`."""

    def call(self, x, mask=None, training=None):
        if 0.0 < self.dropout_rate < 1.0 or not self.use_bias:
            return super().call(x, mask=mask, training=training)
        shape = tf.shape(x)
        h = tf.nn.bias_add(tf.matmul(tf.reshape(x, [-1, shape[-1]]), self.W1), self.b1)
        if self.activation is gelu_tanh and fused.wanted(self, training):
            h = fused.gelu_tanh(h)
        elif self.activation is gelu_tanh:
            h = tf.nn.gelu(h, approximate=True)
        elif self.activation is not None:
            h = self.activation(h)
        y = tf.nn.bias_add(tf.matmul(h, self.W2), self.b2)
        return tf.reshape(y, tf.concat([shape[:-1], [-1]], axis=0))


def mixed_precision_active() -> bool:
    """True while the global Keras policy computes in float16 / bfloat16."""
    return keras.mixed_precision.global_policy().compute_dtype != "float32"


@contextlib.contextmanager
def dtype_policy(name: str):
    """Build layers under a Keras dtype policy ("float32", "mixed_float16"), then restore the
    previous global policy.  Layers keep the policy they were built with, so a mixed-precision
    training model does not leak float16 into models built later in the same process."""
    if name == "mixed_float16":
        _warn_float16_without_gpu()
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


FLOAT16_ON_CPU = (
    "train.precision=mixed_float16 without a GPU: this process's CPU runs float16 matmuls in a "
    "reference kernel (one ~300x slower than float32 was measured on a CPU with AVX512_FP16); "
    "mixed_bfloat16 is the fast precision on CPUs"
)


@functools.cache
def _warn_float16_without_gpu() -> None:
    """Once per process: Keras' own warning about this is one of the TensorFlow lines the CLI hides."""
    if not tf.config.list_physical_devices("GPU"):
        log.warning(FLOAT16_ON_CPU)


class BertEncoder:
    """Google BERT (``bert_config.json``), built by keras-bert's ``get_model``."""

    layout = "bert"

    def __init__(self, config: EncoderConfig):
        if config.layout != self.layout:
            raise ValueError(
                f"{type(self).__name__} needs a {self.layout} config, got {config.layout} ({config.source})"
            )
        self.config = config

    # -- building ------------------------------------------------------------------------
    def build(self, seq_len: int | None = None, name: str = "encoder") -> keras.Model:
        c = self.config
        _check_seq_len(c, seq_len)
        if mixed_precision_active():
            raise ValueError(
                f"mixed precision is not available for the BERT layout ({c.source}): it is built by "
                f"keras-bert's get_model, whose attention layer is float32-only; train it with "
                f"train.mixed_precision=false (ALBERT layouts support it)"
            )
        inputs, sequence = get_model(
            token_num=c.vocab_size,
            pos_num=c.max_position_embeddings,
            seq_len=seq_len,
            embed_dim=c.hidden_size,
            transformer_num=c.num_hidden_layers,
            head_num=c.num_attention_heads,
            feed_forward_dim=c.intermediate_size,
            dropout_rate=c.hidden_dropout_prob,
            feed_forward_activation=activation_for(c),
            training=False,
            trainable=True,
        )
        return self._finish(inputs, sequence, name)

    @staticmethod
    def _finish(inputs, sequence, name) -> keras.Model:
        cls = Extract(index=0, name="Extract-CLS")(sequence)
        return keras.Model(inputs=inputs, outputs=[sequence, cls], name=name)

    # -- checkpoint mapping --------------------------------------------------------------
    def variable_map(self) -> dict[str, list[str]]:
        c = self.config
        out = _embeddings_map()
        for i in range(c.num_hidden_layers):
            out.update(_bert_block_map(f"Encoder-{i + 1}", f"bert/encoder/layer_{i}"))
        return out


class BrightmartAlbertEncoder(BertEncoder):
    """brightmart albert_zh: factorised embedding projected to H right after the lookup (no bias),
    H-wide segment / position embeddings and LayerNorm, one shared block (post-LN or pre-LN)."""

    layout = "albert_brightmart"

    def build(self, seq_len: int | None = None, name: str = "encoder") -> keras.Model:
        c = self.config
        _check_seq_len(c, seq_len)
        inputs = _inputs(seq_len)
        x = self.embeddings(inputs)
        blocks = {g: self._block_layers(g) for g in self.groups()}
        for i in range(c.num_hidden_layers):
            for layers in blocks[c.group_of_layer(i)]:
                x = _apply_block(
                    layers,
                    x,
                    preln=c.ln_type == "preln",
                    dropout=c.hidden_dropout_prob,
                    name=f"Encoder-{i + 1}-{layers['name']}",
                )
        return self._finish(inputs, x, name)

    def groups(self) -> list[int]:
        return [0]

    def embeddings(self, inputs):
        c = self.config
        token = keras.layers.Embedding(
            c.vocab_size, c.embedding_size, mask_zero=True, name="Embedding-Token"
        )(inputs[0])
        token = keras.layers.Dense(c.hidden_size, use_bias=False, name="Embedding-Token-Projection")(token)
        segment = keras.layers.Embedding(c.type_vocab_size, c.hidden_size, name="Embedding-Segment")(
            inputs[1]
        )
        x = keras.layers.Add(name="Embedding-Token-Segment")([token, segment])
        x = PositionEmbedding(
            c.max_position_embeddings,
            c.hidden_size,
            mode=PositionEmbedding.MODE_ADD,
            name="Embedding-Position",
        )(x)
        x = _layer_norm("Embedding-Norm")(x)
        return _dropout(x, c.hidden_dropout_prob, "Embedding-Dropout")

    def _block_layers(self, group: int) -> list[dict]:
        c = self.config
        out = []
        for inner in range(c.inner_group_num):
            prefix = self._block_prefix(group, inner)
            out.append(
                {
                    "name": "Shared" if self.layout == "albert_brightmart" else f"Group-{group}-{inner}",
                    "attention": MultiHeadAttention(
                        head_num=c.num_attention_heads,
                        activation=None,
                        name=f"{prefix}-MultiHeadSelfAttention",
                    ),
                    "attention_norm": _layer_norm(f"{prefix}-MultiHeadSelfAttention-Norm"),
                    "feed_forward": FeedForward(
                        units=c.intermediate_size, activation=activation_for(c), name=f"{prefix}-FeedForward"
                    ),
                    "feed_forward_norm": _layer_norm(f"{prefix}-FeedForward-Norm"),
                }
            )
        return out

    def _block_prefix(self, group: int, inner: int) -> str:
        return "Encoder-Shared"

    def variable_map(self) -> dict[str, list[str]]:
        out = _embeddings_map(projection=True)
        out.update(_bert_block_map("Encoder-Shared", "bert/encoder/layer_shared"))
        return out


class GoogleAlbertEncoder(BrightmartAlbertEncoder):
    """Google-format ALBERT: embeddings and their LayerNorm at E, ``embedding_hidden_mapping_in``
    (with bias) to H, blocks in ``num_hidden_groups`` groups of ``inner_group_num`` layers."""

    layout = "albert_google"

    def groups(self) -> list[int]:
        return self.config.used_groups()

    def embeddings(self, inputs):
        c = self.config
        e = c.embedding_size
        token = keras.layers.Embedding(c.vocab_size, e, mask_zero=True, name="Embedding-Token")(inputs[0])
        segment = keras.layers.Embedding(c.type_vocab_size, e, name="Embedding-Segment")(inputs[1])
        x = keras.layers.Add(name="Embedding-Token-Segment")([token, segment])
        x = PositionEmbedding(
            c.max_position_embeddings, e, mode=PositionEmbedding.MODE_ADD, name="Embedding-Position"
        )(x)
        x = _layer_norm("Embedding-Norm")(x)
        x = _dropout(x, c.hidden_dropout_prob, "Embedding-Dropout")
        if e != c.hidden_size:
            x = keras.layers.Dense(c.hidden_size, name="Embedding-Mapping")(x)
        return x

    def _block_prefix(self, group: int, inner: int) -> str:
        return f"Encoder-Group-{group}-{inner}"

    def variable_map(self) -> dict[str, list[str]]:
        c = self.config
        out = _embeddings_map()
        if c.embedding_size != c.hidden_size:
            out["Embedding-Mapping"] = _dense("bert/encoder/embedding_hidden_mapping_in")
        for g in self.groups():
            for inner in range(c.inner_group_num):
                p = f"bert/encoder/transformer/group_{g}/inner_group_{inner}"
                k = self._block_prefix(g, inner)
                out[f"{k}-MultiHeadSelfAttention"] = (
                    _dense(f"{p}/attention_1/self/query")
                    + _dense(f"{p}/attention_1/self/key")
                    + _dense(f"{p}/attention_1/self/value")
                    + _dense(f"{p}/attention_1/output/dense")
                )
                out[f"{k}-MultiHeadSelfAttention-Norm"] = _ln(f"{p}/LayerNorm")
                out[f"{k}-FeedForward"] = _dense(f"{p}/ffn_1/intermediate/dense") + _dense(
                    f"{p}/ffn_1/intermediate/output/dense"
                )
                out[f"{k}-FeedForward-Norm"] = _ln(f"{p}/LayerNorm_1")
        return out


# Registry instead of string checks scattered around.
ENCODERS: dict[str, type[BertEncoder]] = {
    "bert": BertEncoder,
    "albert_brightmart": BrightmartAlbertEncoder,
    "albert_google": GoogleAlbertEncoder,
}


def encoder_for(config: EncoderConfig) -> BertEncoder:
    """The encoder class instance for a config's layout."""
    return ENCODERS[config.layout](config)


def build_encoder(
    config: EncoderConfig, seq_len: int | None = None, dropout: float | None = None, name: str = "encoder"
) -> keras.Model:
    """Build an encoder.

    Args:
        config: the architecture (from the checkpoint's own JSON).
        seq_len: fixed sequence length, or ``None`` for variable-length batches.
        dropout: fine-tuning dropout for hidden states; ``None`` keeps the config's values.

    Returns:
        A model ``[token_ids, segment_ids] -> [sequence_output, cls_vector]``.
    """
    return encoder_for(config.with_dropout(dropout)).build(seq_len=seq_len, name=name)


def initialize_encoder(model: keras.Model, config: EncoderConfig, seed: int = 0) -> None:
    """Random-initialise encoder weights as BERT / ALBERT pre-training did: truncated normal with
    ``initializer_range`` for kernels and embeddings, ones for LayerNorm gamma, zeros for biases.

    Needed because keras-bert's layers reuse one initializer instance for Wq / Wk / Wv / Wo,
    which gives the four kernels identical starting values.
    """

    rng = np.random.default_rng(seed)
    std = config.initializer_range
    for layer_name, names in encoder_for(config).variable_map().items():
        for weight, name in zip(model.get_layer(layer_name).weights, names):
            if name.endswith("/gamma"):
                value = np.ones(weight.shape)
            elif name.endswith(("/beta", "/bias")):
                value = np.zeros(weight.shape)
            else:
                value = rng.normal(0.0, std, size=weight.shape)
                bad = np.abs(value) > 2 * std
                while bad.any():  # truncated normal: redraw beyond two standard deviations
                    value[bad] = rng.normal(0.0, std, size=int(bad.sum()))
                    bad = np.abs(value) > 2 * std
            weight.assign(value.astype(np.float32))


# ---- helpers ----------------------------------------------------------------------------
def _check_seq_len(config: EncoderConfig, seq_len: int | None) -> None:
    if seq_len is not None and seq_len > config.max_position_embeddings:
        raise ValueError(
            f"max_seq_length={seq_len} exceeds max_position_embeddings={config.max_position_embeddings} "
            f"of {config.source}; use a max length <= {config.max_position_embeddings}"
        )


def _layer_norm(name: str):
    # float32 even under mixed precision: epsilon 1e-12 is 0 in float16, and the variance of
    # float16 activations loses its low bits
    return LayerNormalization(epsilon=LN_EPSILON, name=name, dtype="float32")


def _inputs(seq_len):
    return [
        keras.layers.Input(shape=(seq_len,), name="Input-Token"),
        keras.layers.Input(shape=(seq_len,), name="Input-Segment"),
    ]


def _dropout(x, rate: float, name: str):
    return keras.layers.Dropout(rate, name=name)(x) if rate > 0 else x


def _apply_block(layers: dict, x, preln: bool, dropout: float, name: str):
    """One transformer layer. post-LN (BERT): LN(x + Attn(x)), LN(a + FFN(a)).
    pre-LN (brightmart ``prelln_transformer_model``): a = x + Attn(LN(x)), a + FFN(LN(a)); the same
    two LayerNorm variables are used, before instead of after, and there is no final LayerNorm."""
    attn_in = layers["attention_norm"](x) if preln else x
    a = _dropout(layers["attention"](attn_in), dropout, f"{name}-Attention-Dropout")
    # residual sums in float32 under mixed precision: a bfloat16 residual stream rounds every
    # layer's sum to 8 bits of mantissa (and bfloat16 elementwise ops are emulated on CPUs, so
    # the float32 add is also faster there)
    a = keras.layers.Add(name=f"{name}-Attention-Add", dtype="float32")([x, a])
    if not preln:
        a = layers["attention_norm"](a)
    ffn_in = layers["feed_forward_norm"](a) if preln else a
    f = _dropout(layers["feed_forward"](ffn_in), dropout, f"{name}-FeedForward-Dropout")
    out = keras.layers.Add(name=f"{name}-FeedForward-Add", dtype="float32")([a, f])
    if not preln:
        out = layers["feed_forward_norm"](out)
    return out


def _ln(scope: str) -> list[str]:
    return [f"{scope}/gamma", f"{scope}/beta"]


def _dense(scope: str) -> list[str]:
    return [f"{scope}/kernel", f"{scope}/bias"]


def _embeddings_map(projection: bool = False) -> dict[str, list[str]]:
    """The embedding layers' checkpoint names, the same in every published layout; with
    ``projection``, brightmart's factorised token embedding. The order is the random start's
    draw order (:func:`initialize_encoder`): changing it changes every seeded model."""
    token = {"Embedding-Token": ["bert/embeddings/word_embeddings"]}
    if projection:
        token["Embedding-Token-Projection"] = ["bert/embeddings/word_embeddings_2"]
    return {
        **token,
        "Embedding-Segment": ["bert/embeddings/token_type_embeddings"],
        "Embedding-Position": ["bert/embeddings/position_embeddings"],
        "Embedding-Norm": _ln("bert/embeddings/LayerNorm"),
    }


def _bert_block_map(layer_prefix: str, scope: str) -> dict[str, list[str]]:
    return {
        f"{layer_prefix}-MultiHeadSelfAttention": (
            _dense(f"{scope}/attention/self/query")
            + _dense(f"{scope}/attention/self/key")
            + _dense(f"{scope}/attention/self/value")
            + _dense(f"{scope}/attention/output/dense")
        ),
        f"{layer_prefix}-MultiHeadSelfAttention-Norm": _ln(f"{scope}/attention/output/LayerNorm"),
        f"{layer_prefix}-FeedForward": _dense(f"{scope}/intermediate/dense")
        + _dense(f"{scope}/output/dense"),
        f"{layer_prefix}-FeedForward-Norm": _ln(f"{scope}/output/LayerNorm"),
    }
