"""Packing and masking for masked-LM pre-training: pure numpy over token ids.

Texts are packed into ``[CLS] ... [SEP]`` sequences (short sentences share one, so no compute is
spent on padding), optionally as ``[CLS] A [SEP] B [SEP]`` pairs for sentence-order prediction;
each epoch masks them anew (15 %, 80/10/10, whole words as an option). :mod:`albert_ray.pretrain.driver`
reads the corpus and runs the loop; this module owns what a training batch holds.
"""

from __future__ import annotations

import math
import zlib
from typing import TYPE_CHECKING

import numpy as np

from albert_ray.io.batching import pad_batch
from albert_ray.model.tokenization import CLS, MASK, PAD, SEP, UNK, CharTokenizer, Vocab

if TYPE_CHECKING:
    from albert_ray.pretrain.config import PretrainTrain


WORD_START = 1 << 30  # flag bit on a token id: a word begins here (whole-word masking)


def pack_texts(
    texts, tokenizer: CharTokenizer, max_len: int, words: bool = False, pairs: bool = False
) -> list[list[int]]:
    """Token ids of the texts, concatenated and cut into ``[CLS] body [SEP]`` sequences of at
    most ``max_len`` (short sentences share a sequence: no compute spent on padding).

    ``words``: the texts are word-segmented with spaces (``北京 天安门``); the first token of
    each word carries :data:`WORD_START` (a bit no vocabulary reaches), so whole-word masking
    needs no second column. :func:`mask_batch` strips it.

    ``pairs`` (sentence-order prediction): ``[CLS] A [SEP] B [SEP]``, A and B consecutive text cut
    at the text boundary nearest the middle of the sequence (at the middle when it holds none);
    a sequence of one token has no B.
    """
    body = max_len - (3 if pairs else 2)
    stream: list[int] = []
    boundaries: set[int] = set()
    for text in texts:
        enc = tokenizer.encode(text)
        ids = enc.token_ids[1:-1]
        if words:
            chars = enc.char_index[1:-1]
            ids = [t | WORD_START if j == 0 or chars[j] != chars[j - 1] + 1 else t for j, t in enumerate(ids)]
        boundaries.add(len(stream))
        stream += ids
    cls, sep = tokenizer.vocab.cls_id, tokenizer.vocab.sep_id
    out = []
    for i in range(0, len(stream), body):
        chunk = stream[i : i + body]
        if not pairs or len(chunk) < 2:
            out.append([cls] + chunk + [sep])
            continue
        inner = [b - i for b in boundaries if i < b < i + len(chunk)]
        cut = min(inner, key=lambda b: abs(b - len(chunk) / 2)) if inner else len(chunk) // 2
        out.append([cls] + chunk[:cut] + [sep] + chunk[cut:] + [sep])
    return out


def order_batch(ids: np.ndarray, rng: np.random.Generator, vocab: Vocab) -> tuple:
    """Sentence-order prediction on a padded batch of ``[CLS] A [SEP] B [SEP]`` rows: half the
    rows (drawn anew each epoch) become ``[CLS] B [SEP] A [SEP]``.

    Returns:
        ``(ids, segments, labels, weights)``: segment 1 from B (or the swapped A) on; label 1 when
        swapped; weight 0 for rows with one segment.
    """
    ids = ids.copy()
    segments = np.zeros_like(ids)
    labels = np.zeros(len(ids), np.int32)
    weights = np.zeros(len(ids), np.float32)
    sep = vocab.sep_id
    for row in range(len(ids)):
        seps = np.flatnonzero(ids[row] == sep)
        if len(seps) < 2:
            continue
        first, last = seps[0], seps[1]
        a, b = ids[row, 1:first].copy(), ids[row, first + 1 : last].copy()
        if rng.random() < 0.5:
            a, b = b, a
            labels[row] = 1
        ids[row, 1 : 1 + len(a)], ids[row, 1 + len(a)] = a, sep
        ids[row, 2 + len(a) : 2 + len(a) + len(b)] = b
        segments[row, 2 + len(a) : last + 1] = 1
        weights[row] = 1.0
    return ids, segments, labels, weights


def make_batch(rows, rng: np.random.Generator, vocab: Vocab, t: PretrainTrain) -> tuple:
    """A training batch: padded, sentence order drawn (if on), masked; the step's inputs
    ``(ids, segments, positions, labels, weights, order_labels, order_weights)``."""
    batch = pad_batch(rows)
    if t.sentence_order:
        batch, segments, order_labels, order_weights = order_batch(batch, rng, vocab)
    else:
        segments, order_labels, order_weights = (
            np.zeros_like(batch),
            np.zeros(len(batch), np.int32),
            np.zeros(len(batch), np.float32),
        )
    ids, pos, labels, weights = mask_batch(batch, rng, vocab, t.mask_rate, t.whole_word_masking)
    return ids, segments, pos, labels, weights, order_labels, order_weights


def is_heldout(ids, permille: int) -> bool:
    """A fixed, content-based slice of the sequences kept out of training."""
    return zlib.crc32(np.asarray(ids, dtype=np.int32).tobytes()) % 1000 < permille


def special_ids(vocab: Vocab) -> np.ndarray:
    """The ids never masked, never a label: ``[PAD]``, ``[CLS]``, ``[SEP]``, ``[MASK]``, ``[UNK]``."""
    return np.array([vocab.index[t] for t in (PAD, CLS, SEP, MASK, UNK) if t in vocab.index], dtype=np.int64)


def token_counts(rows, vocab_size: int) -> np.ndarray:
    """How often each vocabulary id occurs in ``rows`` (packed sequences; word-start flags dropped)."""
    counts = np.zeros(vocab_size, np.int64)
    for i in range(0, len(rows), 4096):
        counts += np.bincount(np.concatenate(rows[i : i + 4096]) & ~WORD_START, minlength=vocab_size)
    return counts


def mask_batch(
    ids: np.ndarray, rng: np.random.Generator, vocab: Vocab, rate: float = 0.15, whole_words: bool = False
) -> tuple:
    """Dynamic masking of a padded batch: ``rate`` of each row's ordinary tokens (never
    ``[PAD]``/``[CLS]``/``[SEP]``/``[MASK]``) become prediction targets, of which 80 % are
    replaced by ``[MASK]``, 10 % by a random ordinary token and 10 % kept. ``whole_words``: whole
    words (marked by :data:`WORD_START`, see :func:`pack_texts`) are chosen until the rate is
    reached, every token of a chosen word a target (the 80/10/10 draw stays per token, as BERT's).

    Returns:
        ``(inputs, positions, labels, weights)``: ``positions``/``labels``/``weights`` are
        ``(B, P)`` with ``P = ceil(rate * L)``; padding slots have weight 0.
    """
    starts = (ids & WORD_START) != 0
    ids = ids & ~WORD_START
    special = special_ids(vocab)
    ordinary = np.setdiff1d(np.arange(len(vocab)), special)
    b, length = ids.shape
    p = max(1, math.ceil(rate * length))
    inputs = ids.copy()
    positions = np.zeros((b, p), np.int32)
    labels = np.zeros((b, p), np.int32)
    weights = np.zeros((b, p), np.float32)
    mask_id = vocab.index[MASK]
    for row in range(b):
        candidates = np.flatnonzero(~np.isin(ids[row], special))
        if not len(candidates):
            continue
        k = min(p, max(1, int(round(rate * len(candidates)))))
        if whole_words:
            chosen = _whole_words(candidates, starts[row], k, rng)
            k = len(chosen)
        else:
            chosen = np.sort(rng.choice(candidates, k, replace=False))
        r = rng.random(k)
        positions[row, :k], labels[row, :k], weights[row, :k] = chosen, ids[row, chosen], 1.0
        inputs[row, chosen[r < 0.8]] = mask_id
        swap = chosen[(r >= 0.8) & (r < 0.9)]
        inputs[row, swap] = rng.choice(ordinary, len(swap))
    return inputs, positions, labels, weights


def _whole_words(candidates: np.ndarray, starts: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of whole words, in random word order, while they fit in ``k`` tokens."""
    cut = np.flatnonzero(starts[candidates] | (np.diff(candidates, prepend=-2) != 1))
    words = np.split(candidates, cut[1:]) if len(cut) else [candidates]
    chosen: list[int] = []
    for w in rng.permutation(len(words)):
        if len(chosen) + len(words[w]) <= k:
            chosen += words[w].tolist()
        if len(chosen) == k:
            break
    return np.sort(np.array(chosen or words[int(rng.integers(len(words)))][:k].tolist(), dtype=np.int64))
