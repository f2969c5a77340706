"""Linear-chain CRF: a tf-keras layer for training, numpy Viterbi / marginals for inference.

Written here because no TF2 CRF is maintained any more (keras-contrib is not on PyPI,
tensorflow-addons is end-of-life); the decoder is kept apart from the layer, as bert4keras does,
so inference needs only numpy.

Tag sequences are padded with ``-1``; the mask is ``tags >= 0`` and must be a prefix mask.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow import keras

import albert_ray  # noqa: F401


class CRF(keras.layers.Layer):
    """Holds the transition scores; passes emissions through unchanged.

    The model's output is the emission scores ``(B, T, K)``; :meth:`loss` is the mean negative
    log-likelihood of the gold tags, to be given to ``compile``.
    """

    def __init__(self, num_tags: int, **kwargs):
        super().__init__(**kwargs)
        self.num_tags = num_tags
        self.supports_masking = True

    def build(self, input_shape):
        k = self.num_tags
        init = keras.initializers.RandomUniform(-0.1, 0.1, seed=17)
        self.transitions = self.add_weight(name="transitions", shape=(k, k), initializer=init)
        self.start = self.add_weight(name="start", shape=(k,), initializer="zeros")
        self.end = self.add_weight(name="end", shape=(k,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs, mask=None):
        return tf.identity(inputs)

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "num_tags": self.num_tags}

    def params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(transitions, start, end)`` as numpy arrays for :func:`viterbi_decode`."""
        return self.transitions.numpy(), self.start.numpy(), self.end.numpy()

    def log_likelihood(self, emissions, tags):
        """log p(tags | emissions) per sequence; ``tags`` padded with -1."""
        emissions = tf.cast(emissions, tf.float32)
        tags = tf.cast(tags, tf.int32)
        # plain tensors, not resource variables: XLA has no ResourceGatherNd kernel
        transitions, start, end = (tf.convert_to_tensor(v) for v in (self.transitions, self.start, self.end))
        mask = tags >= 0
        safe = tf.maximum(tags, 0)
        maskf = tf.cast(mask, tf.float32)
        lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)

        # score of the gold path
        emit = tf.reduce_sum(tf.gather(emissions, safe, batch_dims=2) * maskf, axis=1)
        pair = tf.gather_nd(transitions, tf.stack([safe[:, :-1], safe[:, 1:]], axis=-1))
        trans = tf.reduce_sum(pair * maskf[:, 1:], axis=1)
        first = tf.gather(start, safe[:, 0])
        last_tag = tf.gather(safe, tf.maximum(lengths - 1, 0), batch_dims=1)
        gold = emit + trans + first + tf.gather(end, last_tag)

        # log partition by the forward algorithm
        alpha0 = start[None, :] + emissions[:, 0]
        steps = (tf.transpose(emissions[:, 1:], [1, 0, 2]), tf.transpose(mask[:, 1:]))

        def step(alpha, inputs):
            emission_t, mask_t = inputs
            nxt = tf.reduce_logsumexp(alpha[:, :, None] + transitions[None], axis=1) + emission_t
            return tf.where(mask_t[:, None], nxt, alpha)

        alpha = tf.foldl(step, steps, initializer=alpha0)
        log_z = tf.reduce_logsumexp(alpha + end[None, :], axis=1)
        return gold - log_z

    def loss(self, y_true, y_pred):
        """Mean negative log-likelihood (per sequence) for ``compile(loss=crf.loss)``."""
        return -self.log_likelihood(y_pred, y_true)


def viterbi_decode(
    emissions: np.ndarray, transitions: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[list[int], float]:
    """Best tag path for one sequence of emissions ``(T, K)`` and its score."""
    t_len = emissions.shape[0]
    score = start + emissions[0]
    back = np.zeros((t_len, emissions.shape[1]), dtype=np.int64)
    for t in range(1, t_len):
        cand = score[:, None] + transitions
        back[t] = cand.argmax(0)
        score = cand.max(0) + emissions[t]
    score = score + end
    best = [int(score.argmax())]
    for t in range(t_len - 1, 0, -1):
        best.append(int(back[t, best[-1]]))
    return best[::-1], float(score.max())


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.exp(x - m).sum(axis=axis))


def marginals(
    emissions: np.ndarray, transitions: np.ndarray, start: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """Per-position tag marginals ``p(y_t = k | x)`` ``(T, K)`` by forward-backward (entity scores)."""
    t_len, k = emissions.shape
    alpha = np.zeros((t_len, k))
    beta = np.zeros((t_len, k))
    alpha[0] = start + emissions[0]
    for t in range(1, t_len):
        alpha[t] = _logsumexp(alpha[t - 1][:, None] + transitions, 0) + emissions[t]
    beta[-1] = end
    for t in range(t_len - 2, -1, -1):
        beta[t] = _logsumexp(transitions + (emissions[t + 1] + beta[t + 1])[None, :], 1)
    log_z = _logsumexp(alpha[-1] + end, 0)
    return np.exp(alpha + beta - log_z)


def viterbi_batch(
    emissions: np.ndarray, lengths: np.ndarray, transitions: np.ndarray, start: np.ndarray, end: np.ndarray
) -> list[list[int]]:
    """:func:`viterbi_decode` for a padded batch ``(B, T, K)``, vectorised over the batch (the
    per-row Python loop was the bottleneck of bulk labeling)."""
    b, t_len, k = emissions.shape
    score = start[None] + emissions[:, 0]
    back = np.zeros((b, t_len, k), dtype=np.int32)
    for t in range(1, t_len):
        cand = score[:, :, None] + transitions[None]
        best_prev = cand.argmax(1)
        new = cand.max(1) + emissions[:, t]
        active = (t < lengths)[:, None]
        back[:, t] = np.where(active, best_prev, np.arange(k)[None])  # identity past the end
        score = np.where(active, new, score)
    last = (score + end[None]).argmax(1)
    paths = np.zeros((b, t_len), dtype=np.int32)
    paths[:, -1] = last
    for t in range(t_len - 1, 0, -1):
        paths[:, t - 1] = back[np.arange(b), t, paths[:, t]]
    return [paths[i, : lengths[i]].tolist() for i in range(b)]


def marginals_batch(
    emissions: np.ndarray, lengths: np.ndarray, transitions: np.ndarray, start: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """:func:`marginals` for a padded batch ``(B, T, K)`` (rows past a sequence's end are junk)."""
    b, t_len, k = emissions.shape
    alpha = np.zeros((b, t_len, k))
    beta = np.zeros((b, t_len, k))
    alpha[:, 0] = start[None] + emissions[:, 0]
    for t in range(1, t_len):
        alpha[:, t] = _logsumexp(alpha[:, t - 1][:, :, None] + transitions[None], 1) + emissions[:, t]
    last = lengths - 1
    beta[np.arange(b), last] = end[None]
    for t in range(t_len - 2, -1, -1):
        nxt = _logsumexp(transitions[None] + (emissions[:, t + 1] + beta[:, t + 1])[:, None, :], 2)
        beta[:, t] = np.where((t < last)[:, None], nxt, beta[:, t])
    log_z = _logsumexp(alpha[np.arange(b), last] + end[None], 1)
    with np.errstate(over="ignore"):  # positions past a row's end are junk and may overflow
        return np.exp(alpha + beta - log_z[:, None, None])
