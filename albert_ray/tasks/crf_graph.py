"""The NER task's serving outputs in the graph: CRF Viterbi paths and marginals, spans of tag
paths, and windows stitched as :func:`albert_ray.tasks.label_encoding.stitch_windows` does, as character
offsets into the input texts (what ``albert-ray export`` saves for an NER model).

Written here because neither keras-bert nor TensorFlow ships a CRF decoder for a SavedModel that
serves raw text. This module imports TensorFlow only: the task calls it, and ``export`` calls the
task (no import cycle).
"""

from __future__ import annotations

import tensorflow as tf

BIG = 1.0e9  # "no limit" in the stitching rule's centrality


def viterbi(emissions, lengths, transitions, start, end):
    """Best tag paths ``(W, T)`` (as :func:`albert_ray.tasks.crf.viterbi_batch`)."""
    k = tf.shape(transitions)[0]
    steps = tf.range(1, tf.shape(emissions)[1])

    def forward(carry, t):
        score, _ = carry
        cand = score[:, :, None] + transitions[None]
        active = (t < lengths)[:, None]
        back = tf.where(active, tf.argmax(cand, 1, output_type=tf.int32), tf.range(k)[None])
        return tf.where(active, tf.reduce_max(cand, 1) + emissions[:, t], score), back

    score0 = start[None] + emissions[:, 0]  # windows hold [CLS] and [SEP]: T >= 2, steps is never empty
    scores, backs = tf.scan(forward, steps, initializer=(score0, tf.zeros_like(score0, tf.int32)))
    last = tf.argmax(scores[-1] + end[None], 1, output_type=tf.int32)

    def backward(tag, back_t):
        return tf.gather(back_t, tag, batch_dims=1)

    earlier = tf.scan(backward, backs, initializer=last, reverse=True)  # tags at 0..T-2
    return tf.concat([tf.transpose(earlier), last[:, None]], axis=1)


def marginals(emissions, lengths, transitions, start, end):
    """Tag marginals ``(W, T, K)`` by forward-backward in log space, in float64 as
    :func:`albert_ray.tasks.crf.marginals_batch` (float32 sums drift by ~1e-4 over a 128-token window)."""
    emissions, transitions, start, end = (
        tf.cast(x, tf.float64) for x in (emissions, transitions, start, end)
    )
    t_len = tf.shape(emissions)[1]
    alpha0 = start[None] + emissions[:, 0]
    alphas = tf.scan(
        lambda a, t: tf.reduce_logsumexp(a[:, :, None] + transitions[None], 1) + emissions[:, t],
        tf.range(1, t_len),
        initializer=alpha0,
    )
    alpha = tf.concat([alpha0[None], alphas], 0)  # (T, W, K)
    last = lengths - 1

    def back(beta, t):
        nxt = tf.reduce_logsumexp(transitions[None] + (emissions[:, t + 1] + beta)[:, None, :], 2)
        return tf.where((t < last)[:, None], nxt, tf.broadcast_to(end[None], tf.shape(beta)))

    betas = tf.scan(
        back, tf.range(t_len - 2, -1, -1), initializer=tf.broadcast_to(end[None], tf.shape(alpha0))
    )
    beta = tf.concat([tf.reverse(betas, [0]), tf.broadcast_to(end[None], tf.shape(alpha0))[None]], 0)
    log_z = tf.reduce_logsumexp(tf.gather(tf.transpose(alpha, [1, 0, 2]), last, batch_dims=1) + end[None], 1)
    return tf.exp(tf.transpose(alpha + beta, [1, 0, 2]) - log_z[:, None, None])


def path_spans(paths, lengths, prefixes: int, bioes: bool):
    """Spans of tag paths, decoded as :func:`albert_ray.tasks.label_encoding.tags_to_spans` does (lenient):
    flat ``(window, first token, last token + 1, label index)``."""
    t_len = tf.shape(paths)[1]
    valid = tf.range(t_len)[None] < lengths[:, None]
    tag = tf.where(valid, paths, 0)
    label = (tag - 1) // prefixes
    prefix = tf.where(tag > 0, (tag - 1) % prefixes, -1)  # 0 B, 1 I, (2 E, 3 S)
    prev_prefix = tf.pad(prefix[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
    prev_label = tf.pad(label[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
    inner = (prefix == 1) | (prefix == 2) if bioes else prefix == 1  # I (or E): continues an entity
    continues = inner & ((prev_prefix == 0) | (prev_prefix == 1)) & (prev_label == label)
    starts = (prefix >= 0) & ~continues
    in_span = starts | continues
    seg = tf.cumsum(tf.cast(tf.reshape(starts, [-1]), tf.int32)) - 1  # span id of each position
    where = tf.reshape(in_span, [-1])
    seg, flat_pos = tf.boolean_mask(seg, where), tf.boolean_mask(tf.range(tf.size(paths)), where)
    count = tf.reduce_sum(tf.cast(starts, tf.int32))
    first = tf.math.unsorted_segment_min(flat_pos, seg, count)
    last = tf.math.unsorted_segment_max(flat_pos, seg, count)
    window = first // t_len
    return window, first % t_len, last % t_len + 1, tf.gather(tf.reshape(label, [-1]), first)


def entities(g, transitions, start, end, prefixes: int, bioes: bool, stride: int) -> dict:
    """NER serving outputs of a batch of texts (``g``: :class:`albert_ray.inference.export.Graph`):
    ``num_entities`` (B,), and ``starts``, ``ends``, ``labels``, ``texts``, ``scores`` (B, E)
    padded with -1 / "" / 0, in order of start."""
    text, lengths, ids, chars = g.windows(stride, head_only=False)
    emissions = g.forward(ids)
    paths = viterbi(emissions, lengths, transitions, start, end)
    probs = tf.gather(marginals(emissions, lengths, transitions, start, end), paths, batch_dims=2)
    w, ts, te, label = path_spans(paths, lengths, prefixes, bioes)
    # per span: the characters of its tokens (-1: [CLS] / [SEP]) and the marginals of its tags
    tokens = tf.ragged.range(ts, te)
    at = tf.stack([tf.gather(w, tokens.value_rowids()), tf.cast(tokens.flat_values, tf.int32)], 1)
    span_chars = tokens.with_flat_values(tf.gather_nd(chars, at))
    score = tf.cast(tf.reduce_mean(tokens.with_flat_values(tf.gather_nd(probs, at)), axis=1), tf.float32)
    real = tf.ragged.boolean_mask(span_chars, span_chars >= 0)
    keep = real.row_lengths() > 0  # a span of special tokens alone is no entity
    cs, ce = tf.reduce_min(real, axis=1), tf.reduce_max(real, axis=1) + 1
    w, cs, ce, label, score = (tf.boolean_mask(x, keep) for x in (w, cs, ce, label, score))
    t = tf.gather(text, w)
    return _stitch(g, text, chars, w, t, cs, ce, label, score)


def _first_free(order, t, cs, ce, n_texts):
    """The candidates, taken in ``order``, whose characters no earlier taken span of their text holds."""
    n_chars = tf.reduce_max(tf.concat([ce, [1]], 0))
    occupied = tf.zeros([n_texts, n_chars], tf.bool)

    def take(i, occupied, taken):
        j = order[i]
        span = tf.range(cs[j], ce[j])
        rows = tf.fill(tf.shape(span), t[j])
        free = ~tf.reduce_any(tf.gather_nd(occupied, tf.stack([rows, span], 1)))
        occupied = tf.cond(
            free,
            lambda: tf.tensor_scatter_nd_update(
                occupied, tf.stack([rows, span], 1), tf.ones_like(span, tf.bool)
            ),
            lambda: occupied,
        )
        return i + 1, occupied, taken.write(i, free)

    _, _, taken = tf.while_loop(
        lambda i, *_: i < tf.shape(order)[0],
        take,
        (0, occupied, tf.TensorArray(tf.bool, size=tf.shape(order)[0], element_shape=[])),
    )
    return tf.gather(order, tf.where(taken.stack())[:, 0])


def _stitch(g, text, chars, w, t, cs, ce, label, score) -> dict:
    """:func:`albert_ray.tasks.label_encoding.stitch_windows` over every text's candidates, then padding."""
    first_char = tf.reduce_min(tf.where(chars >= 0, chars, tf.int32.max), axis=1)
    last_char = tf.reduce_max(chars, axis=1) + 1
    window_index = w - tf.gather(
        tf.math.unsorted_segment_min(tf.range(tf.shape(text)[0]), text, tf.shape(g.texts)[0]), t
    )  # index within its text
    windows_of_text = tf.math.bincount(text, minlength=tf.shape(g.texts)[0])
    left = tf.where(window_index == 0, BIG, tf.cast(cs - tf.gather(first_char, w), tf.float32))
    right = tf.where(
        window_index == tf.gather(windows_of_text, t) - 1,
        BIG,
        tf.cast(tf.gather(last_char, w) - ce, tf.float32),
    )
    central = tf.minimum(left, right)
    # sort by (text, -centrality, -length, start, stop, label): stable sorts, least significant first
    order = tf.range(tf.shape(w)[0])
    for key, descending in (
        (label, False),
        (ce, False),
        (cs, False),
        (ce - cs, True),
        (central, True),
        (t, False),
    ):
        k = tf.gather(key, order)
        order = tf.gather(
            order, tf.argsort(k, direction="DESCENDING" if descending else "ASCENDING", stable=True)
        )
    chosen = _first_free(order, t, cs, ce, tf.shape(g.texts)[0])
    # a span's score is that of the first window that found it (as the Python decoder's setdefault)
    same = (
        (tf.gather(t, chosen)[:, None] == t[None])
        & (tf.gather(cs, chosen)[:, None] == cs[None])
        & (tf.gather(ce, chosen)[:, None] == ce[None])
        & (tf.gather(label, chosen)[:, None] == label[None])
    )
    earliest = tf.argmin(tf.where(same, w[None], tf.int32.max), axis=1, output_type=tf.int32)
    ct, cs, ce, label, score = (
        tf.gather(t, chosen),
        tf.gather(cs, chosen),
        tf.gather(ce, chosen),
        tf.gather(label, chosen),
        tf.gather(score, earliest),
    )
    order = tf.range(tf.shape(ct)[0])
    for key in (label, ce, cs, ct):  # output order: by text, then (start, end, label)
        order = tf.gather(order, tf.argsort(tf.gather(key, order), stable=True))
    ct, cs, ce, label, score = (tf.gather(x, order) for x in (ct, cs, ce, label, score))
    names = tf.gather(g.m.extra["types"], label)  # the tag vocabulary lists the types sorted
    b = tf.shape(g.texts)[0]

    def pad(x, fill):
        return tf.RaggedTensor.from_value_rowids(x, tf.cast(ct, tf.int64), tf.cast(b, tf.int64)).to_tensor(
            fill
        )

    spans_text = tf.strings.substr(tf.gather(g.texts, ct), cs, ce - cs, unit="UTF8_CHAR")
    return {
        "num_entities": tf.math.bincount(ct, minlength=b, maxlength=b),
        "starts": pad(cs, -1),
        "ends": pad(ce, -1),
        "labels": pad(names, ""),
        "texts": pad(spans_text, ""),
        "scores": pad(score, 0.0),
    }
