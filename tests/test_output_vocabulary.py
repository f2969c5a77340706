"""The MLM softmax over the ids a corpus holds (``train.output_vocabulary=corpus``): the same
logits as the full output layer at those ids, labels mapped onto them, and no gradient (so no
change) for the head's rows the corpus never holds."""

import numpy as np
import pytest
import tensorflow as tf
from test_encoder_checkpoint import V, tiny

from albert_ray.model.encoder import initialize_encoder
from albert_ray.model.encoder_config import EncoderConfig
from albert_ray.model.tokenization import Vocab
from albert_ray.pretrain.masking import WORD_START, special_ids, token_counts
from albert_ray.pretrain.mlm import OutputVocabulary, build_mlm_model, masked_loss

VOCAB = Vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "d", "e"])


def test_the_output_vocabulary_is_the_corpus_ids_without_special_tokens():
    rows = [np.array([2, 5, 7, 7, 3], np.int32), np.array([2, 9 | WORD_START, 5, 3, 0], np.int32)]
    counts = token_counts(rows, len(VOCAB))
    assert counts.tolist() == [1, 0, 2, 2, 0, 2, 0, 2, 0, 1]
    output = OutputVocabulary.of_counts(counts, special_ids(VOCAB))
    assert output.ids.tolist() == [5, 7, 9]
    labels = np.array([[9, 5, 7, 0]], np.int32)
    weights = np.array([[1, 1, 1, 0]], np.float32)
    assert output.targets(labels, weights).tolist() == [[2, 0, 1, 0]]
    with pytest.raises(RuntimeError, match="^a masked token outside the MLM output vocabulary$"):
        output.targets(np.array([[6]], np.int32), np.ones((1, 1), np.float32))


def _model(output=None):
    config = EncoderConfig.from_dict(tiny("albert_brightmart", ln_type="preln"))
    model = build_mlm_model(config, output=output)
    initialize_encoder(model, config, seed=0)
    model.get_layer("MLM-Head").output_bias.assign(tf.random.stateless_normal([V], seed=[0, 8]) * 0.1)
    return model


def test_a_restricted_softmax_has_the_full_layers_logits_at_its_ids_and_no_gradient_elsewhere():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, V, (4, 20)).astype(np.int32)
    ids[:, 0] = 2
    positions = np.tile(np.arange(1, 8, dtype=np.int32), (4, 1))
    labels = np.take_along_axis(ids, positions, axis=1)
    inputs = [tf.constant(ids), tf.zeros_like(tf.constant(ids)), tf.constant(positions)]
    output = OutputVocabulary.of_counts(np.bincount(ids.ravel(), minlength=V), np.arange(5))
    assert 5 < len(output.ids) < V - 5

    full, restricted = _model(), _model(output)
    restricted.set_weights(full.get_weights())
    np.testing.assert_allclose(restricted(inputs).numpy(), full(inputs).numpy()[..., output.ids], atol=1e-6)

    weights = np.ones(labels.shape, np.float32)
    with tf.GradientTape() as tape:
        loss, correct, n = masked_loss(
            restricted(inputs, training=True), output.targets(labels, weights), weights
        )
    head = restricted.get_layer("MLM-Head")
    grad = tf.convert_to_tensor(tape.gradient(loss, head.output_bias)).numpy()
    outside = np.setdiff1d(np.arange(V), output.ids)
    assert np.all(grad[outside] == 0) and np.all(grad[output.ids] != 0)
    # the loss is the cross-entropy over the restricted logits, label by label
    logits = restricted(inputs).numpy().reshape(-1, len(output.ids))
    targets = output.targets(labels, weights).ravel()
    log_softmax = (
        logits
        - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
        - logits.max(1, keepdims=True)
    )
    np.testing.assert_allclose(float(loss), -log_softmax[np.arange(len(targets)), targets].sum(), rtol=1e-5)
    assert float(n) == labels.size
