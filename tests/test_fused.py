"""The XLA-fused training kernels: each equals the composite ops it replaces, values and
gradients; a pre-training model takes them (and only a model they were enabled on) and computes
the same logits and gradients as without them; its output layer runs in bfloat16 under
mixed_bfloat16 and still returns float32 logits."""

import numpy as np
import tensorflow as tf
from keras_layer_normalization import LayerNormalization as KerasLayerNormalization
from test_encoder_checkpoint import V, tiny

from albert_ray.model import fused
from albert_ray.model.encoder import dtype_policy, gelu_tanh, initialize_encoder
from albert_ray.model.encoder_config import EncoderConfig
from albert_ray.pretrain.mlm import build_mlm_model, masked_loss


def _value_and_grads(fn, *args):
    """``fn(*args)`` and the gradients of ``sum(fn(*args) * upstream)`` for a fixed upstream."""
    with tf.GradientTape() as tape:
        tape.watch(args)
        y = fn(*args)
        loss = tf.reduce_sum(y * tf.random.stateless_normal(tf.shape(y), seed=[1, 2]))
    return y.numpy(), [g.numpy() for g in tape.gradient(loss, args)]


def _assert_same(fused_fn, plain_fn, *args, atol=1e-5):
    y, grads = _value_and_grads(fused_fn, *args)
    y0, grads0 = _value_and_grads(plain_fn, *args)
    np.testing.assert_allclose(y, y0, atol=atol, rtol=1e-5)
    for g, g0 in zip(grads, grads0):
        np.testing.assert_allclose(g, g0, atol=atol, rtol=1e-4)


def test_fused_gelu_equals_the_composite_and_its_gradient():
    x = tf.random.stateless_normal([64, 48], seed=[0, 1]) * 3.0
    _assert_same(fused.gelu_tanh, gelu_tanh, x)


def test_fused_layer_norm_equals_keras_layer_normalization_and_its_gradients():
    layer = KerasLayerNormalization(epsilon=1e-12)
    layer.build((None, 24))
    x = tf.random.stateless_normal([3, 10, 24], seed=[0, 2]) * 2.0 + 1.0
    gamma = tf.random.stateless_normal([24], seed=[0, 3])
    beta = tf.random.stateless_normal([24], seed=[0, 4])

    def plain(x, gamma, beta):
        layer.gamma.assign(gamma), layer.beta.assign(beta)
        return layer(x)

    # the plain layer's gamma / beta are variables: compare the input gradient through both, and
    # the parameter gradients through the fused function against the closed form
    y, (gx, gg, gb) = _value_and_grads(lambda x, g, b: fused.layer_norm(x, g, b, 1e-12), x, gamma, beta)
    y0, (gx0,) = _value_and_grads(lambda x: plain(x, gamma, beta), x)
    np.testing.assert_allclose(y, y0, atol=1e-5)
    np.testing.assert_allclose(gx, gx0, atol=1e-4)
    upstream = tf.random.stateless_normal(y.shape, seed=[1, 2]).numpy()
    normalized = (y0 - beta.numpy()) / gamma.numpy()
    np.testing.assert_allclose(gg, (upstream * normalized).sum((0, 1)), atol=1e-4)
    np.testing.assert_allclose(gb, upstream.sum((0, 1)), atol=1e-4)


def test_fused_cross_entropy_and_logits_bias_equal_the_plain_ops():
    logits = tf.random.stateless_normal([9, 30], seed=[0, 6]) * 3.0
    bias = tf.random.stateless_normal([30], seed=[0, 7])
    labels = tf.constant([0, 3, 29, 7, 7, 1, 2, 11, 5])
    _assert_same(lambda z: fused.logits_with_bias(z, bias), lambda z: z + bias, logits)
    _assert_same(
        lambda z: fused.sparse_cross_entropy(labels, z),
        lambda z: tf.nn.sparse_softmax_cross_entropy_with_logits(labels, z),
        logits,
    )


def _mlm(precision="float32", seed=0):
    config = EncoderConfig.from_dict(tiny("albert_brightmart", ln_type="preln"))
    with dtype_policy(precision):
        model = build_mlm_model(config)
    initialize_encoder(model, config, seed=seed)
    head = model.get_layer("MLM-Head")
    head.output_bias.assign(tf.random.stateless_normal([V], seed=[0, 8]) * 0.1)
    return model


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, V, (4, 20)).astype(np.int32)
    ids[:, 0], ids[2:, 15:] = 2, 0  # [CLS]; two rows padded
    positions = np.tile(np.arange(1, 8, dtype=np.int32), (4, 1))
    labels = rng.integers(5, V, (4, 7)).astype(np.int32)
    return [tf.constant(ids), tf.zeros_like(tf.constant(ids)), tf.constant(positions)], tf.constant(labels)


def _xla_calls(model, inputs) -> int:
    graph = tf.function(lambda: model(inputs, training=True)).get_concrete_function().graph
    calls = [op for op in graph.get_operations() if op.type in ("PartitionedCall", "StatefulPartitionedCall")]
    return sum(op.get_attr("_XlaMustCompile") for op in calls if "_XlaMustCompile" in op.node_def.attr)


def _logits_and_grads(model, inputs, labels):
    with tf.GradientTape() as tape:
        logits = model(inputs, training=True)
        loss, _, n = masked_loss(logits, labels, tf.ones_like(labels, tf.float32))
        loss = loss / n
    return logits.numpy(), [
        tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_variables)
    ]


def test_an_enabled_pretraining_model_trains_through_the_fused_kernels_to_the_same_numbers():
    model = _mlm()
    inputs, labels = _batch()
    # the head's LayerNorm and logits are always fused; the embeddings' LayerNorm and each layer's
    # (2 layers) 2 LayerNorms and GELU only once enabled (the attention softmax stays plain)
    assert _xla_calls(model, inputs) == 2
    plain_logits, plain_grads = _logits_and_grads(model, inputs, labels)
    fused.enable(model)
    assert _xla_calls(model, inputs) == 2 + 1 + 2 * (2 + 1)
    logits, grads = _logits_and_grads(model, inputs, labels)
    np.testing.assert_allclose(logits, plain_logits, atol=1e-5)
    assert len(grads) == len(plain_grads) == len(model.trainable_variables)
    for g, g0 in zip(grads, plain_grads):
        np.testing.assert_allclose(g, g0, atol=1e-6, rtol=1e-4)
    # inference keeps the plain ops
    np.testing.assert_allclose(model(inputs, training=False).numpy(), plain_logits, atol=1e-5)


def test_the_mlm_output_layer_runs_in_bfloat16_and_returns_float32_logits():
    inputs, _ = _batch()
    plain = _mlm("float32")
    reference = plain(inputs).numpy()
    model = _mlm("mixed_bfloat16")
    model.set_weights(plain.get_weights())  # the head's transform is not seeded
    fused.enable(model)
    graph = tf.function(lambda: model(inputs, training=True)).get_concrete_function().graph
    output_layer = [
        op
        for op in graph.get_operations()
        if op.type == "MatMul" and "MLM-Head" in op.name and op.outputs[0].shape[-1] == V
    ]
    assert [op.get_attr("T") for op in output_layer] == [tf.bfloat16]
    logits = model(inputs, training=True)
    assert logits.dtype == tf.float32 and logits.shape == (4, 7, V)
    assert (
        np.abs(logits.numpy() - reference).max() < 0.005 * np.abs(reference).max()
    )  # bfloat16: ~3 significant digits
