"""Training-time kernels fused by XLA: a few elementwise stretches of the encoder, each compiled
into one pass computed in float32 (``tf.function(jit_compile=True)`` inside the ordinary graph).

Why: at ALBERT widths (H = 128 ... 312) a training step on a CPU spends more time in
elementwise ops (GELU, LayerNorm, the attention softmax, the 21,128-way cross-entropy and their
gradients; each op a full pass over memory, and in bfloat16 each is emulated) than in matmuls,
which oneDNN runs ~2-4x faster in bfloat16 than in float32 here.  Compiling the whole step with
XLA (``train.xla``) fuses these too, but XLA's CPU matmuls are not oneDNN's, so it loses the
bfloat16 gain.  The functions take and return the caller's dtype; the result equals the
composite ops' within float32 rounding.  The attention softmax lost from it and stays plain
(:func:`albert_ray.model.encoder.attention_probs` says why).

Only models passed to :func:`enable` use them, and only when called with ``training=True``:
pre-training, whose batches all have one shape.  XLA compiles each function once per input
shape (~0.4 s), so fine-tuning's length-sorted batches, one length each, would spend minutes
compiling; inference and exported models keep the plain ops (oneDNN fuses those into the
matmuls there).
"""

from __future__ import annotations

import math

import tensorflow as tf

import albert_ray  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

_SWITCH = "fused_in_training"


def enable(model) -> None:
    """Make ``model``'s layers use the fused kernels when it is called in training."""
    for layer in model.submodules:
        setattr(layer, _SWITCH, True)


def wanted(layer, training) -> bool:
    """Whether ``layer``, called with ``training``, takes the fused path."""
    return bool(training) and getattr(layer, _SWITCH, False)


_GELU_C, _GELU_A = math.sqrt(2.0 / math.pi), 0.044715


@tf.function(jit_compile=True)
def _gelu_tanh_forward(x):
    x32 = tf.cast(x, tf.float32)
    return tf.cast(0.5 * x32 * (1.0 + tf.tanh(_GELU_C * (x32 + _GELU_A * x32 * x32 * x32))), x.dtype)


@tf.function(jit_compile=True)
def _gelu_tanh_backward(x, dy):
    x32 = tf.cast(x, tf.float32)
    t = tf.tanh(_GELU_C * (x32 + _GELU_A * x32 * x32 * x32))
    slope = 0.5 * (1.0 + t) + 0.5 * x32 * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_A * x32 * x32)
    return tf.cast(tf.cast(dy, tf.float32) * slope, x.dtype)


@tf.custom_gradient
def gelu_tanh(x):
    """tanh-approximated GELU (``encoder.gelu_tanh``); its gradient written out, one pass too."""
    return _gelu_tanh_forward(x), lambda dy: _gelu_tanh_backward(x, dy)


@tf.function(jit_compile=True)
def layer_norm(x, gamma, beta, epsilon):
    """keras-layer-normalization's computation over the last axis, in float32."""
    x = tf.cast(x, tf.float32)
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    centered = x - mean
    variance = tf.reduce_mean(tf.square(centered), axis=-1, keepdims=True)
    return centered / tf.sqrt(variance + epsilon) * gamma + beta


@tf.function(jit_compile=True)
def logits_with_bias(logits, bias):
    """``float32(logits) + bias``: the 21,128-way output layer's last elementwise pass."""
    return tf.nn.bias_add(tf.cast(logits, tf.float32), bias)


@tf.function(jit_compile=True)
def sparse_cross_entropy(labels, logits):
    """Per-position softmax cross-entropy (float32). (An arg-max beside it would run in every
    training step: a compiled function's unused outputs are not pruned.)"""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
