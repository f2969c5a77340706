"""Packing and masking for pre-training: the masking rate and 80/10/10 split, special tokens never
masked, whole words, packing that keeps every token, sentence pairs cut at text boundaries."""

import numpy as np
import pytest

from albert_ray.model.tokenization import CharTokenizer, Vocab
from albert_ray.pretrain.masking import is_heldout, mask_batch, pack_texts

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS = list("甲乙丙丁戊己庚辛壬癸子丑寅卯辰巳午未申酉")
VOCAB = Vocab(SPECIAL + CHARS)


def test_masking_rate_split_and_never_special_tokens():
    rng = np.random.default_rng(0)
    rows = [[2] + list(rng.integers(5, len(VOCAB), rng.integers(10, 60))) + [3] for _ in range(400)]
    from albert_ray.io.batching import pad_batch

    ids = pad_batch(rows)
    inputs, positions, labels, weights = mask_batch(ids, np.random.default_rng(1), VOCAB, rate=0.15)
    chosen = weights > 0
    n_ordinary = sum(len(r) - 2 for r in rows)
    assert chosen.sum() / n_ordinary == pytest.approx(0.15, abs=0.01)
    rows_idx = np.repeat(np.arange(len(rows))[:, None], positions.shape[1], 1)[chosen]
    pos = positions[chosen]
    assert set(ids[rows_idx, pos].tolist()).isdisjoint({0, 2, 3, 4})  # never PAD / CLS / SEP / MASK
    assert (labels[chosen] == ids[rows_idx, pos]).all()
    now = inputs[rows_idx, pos]
    masked, kept = (now == 4).mean(), (now == labels[chosen]).mean()
    assert masked == pytest.approx(0.8, abs=0.03) and kept == pytest.approx(0.1 + 0.1 / len(CHARS), abs=0.03)
    untouched = np.ones_like(ids, bool)
    untouched[rows_idx, pos] = False
    assert (inputs[untouched] == ids[untouched]).all()  # only chosen positions change; padding stays 0


def test_whole_word_masking_takes_every_token_of_a_chosen_word():
    from albert_ray.io.batching import pad_batch
    from albert_ray.pretrain.masking import WORD_START

    rng = np.random.default_rng(0)
    texts = [
        " ".join("".join(rng.choice(CHARS, rng.integers(1, 5))) for _ in range(rng.integers(5, 30)))
        for _ in range(300)
    ]
    seqs = pack_texts(texts, CharTokenizer(VOCAB), max_len=64, words=True)
    ids = pad_batch(seqs)
    plain = ids & ~WORD_START
    assert sorted(set(plain[plain > 4].tolist())) == list(range(5, len(VOCAB)))  # flags strip to the ids
    # the words of each row, as position lists (a word starts at a flag)
    inputs, positions, labels, weights = mask_batch(
        ids, np.random.default_rng(1), VOCAB, rate=0.15, whole_words=True
    )
    assert inputs.max() < len(VOCAB) and labels.max() < len(VOCAB)
    chosen_total = ordinary_total = 0
    for row in range(len(seqs)):
        word, words = [], []
        for j in range(1, len(seqs[row]) - 1):
            if ids[row, j] & WORD_START and word:
                words.append(word)
                word = []
            word.append(j)
        words.append(word)
        chosen = set(positions[row][weights[row] > 0].tolist())
        assert all(set(w) <= chosen or not set(w) & chosen for w in words)  # a word is all in or all out
        assert (labels[row][weights[row] > 0] == plain[row, sorted(chosen)]).all()
        chosen_total += len(chosen)
        ordinary_total += len(seqs[row]) - 2
    assert chosen_total / ordinary_total == pytest.approx(0.15, abs=0.02)


def test_packing_fills_sequences_and_keeps_every_token():
    tok = CharTokenizer(VOCAB)
    texts = ["甲乙丙", "丁戊 己庚", "辛壬癸子丑寅卯辰巳午未申酉"] * 5
    seqs = pack_texts(texts, tok, max_len=10)
    assert all(s[0] == 2 and s[-1] == 3 and len(s) <= 10 for s in seqs)
    assert sum(len(s) - 2 for s in seqs) == sum(len(t.replace(" ", "")) for t in texts)
    assert [len(s) for s in seqs[:-1]] == [10] * (len(seqs) - 1)  # only the last one is short
    assert is_heldout(seqs[0], 1000) and not is_heldout(seqs[0], 0)


def test_sentence_pairs_are_cut_at_a_text_boundary_and_half_are_swapped():
    from albert_ray.io.batching import pad_batch
    from albert_ray.pretrain.masking import order_batch

    tok = CharTokenizer(VOCAB)
    texts = ["甲乙丙丁", "戊己庚辛壬癸", "子丑寅卯辰巳午未申", "酉甲"]  # 4 + 6 + 9 + 2 tokens
    seqs = pack_texts(texts, tok, max_len=18, pairs=True)  # bodies of 15 tokens
    sep, cls = VOCAB.index["[SEP]"], VOCAB.index["[CLS]"]
    ids = [VOCAB.tokens[i] for i in seqs[0]]
    # the text boundaries inside the first 15 tokens are at 4 and 10: 10 is nearer the middle (7.5)
    assert (
        "".join(t if t not in ("[CLS]", "[SEP]") else "|" for t in ids) == "|甲乙丙丁戊己庚辛壬癸|子丑寅卯辰|"
    )
    assert seqs[1] == [cls] + [VOCAB.index[c] for c in "巳午未申"] + [sep] + [
        VOCAB.index[c] for c in "酉甲"
    ] + [sep]

    rng = np.random.default_rng(0)
    rows = [
        [cls] + list(rng.integers(5, 25, a)) + [sep] + list(rng.integers(5, 25, b)) + [sep]
        for a, b in rng.integers(1, 20, (400, 2))
    ] + [[cls, 7, sep]]
    batch = pad_batch(rows)
    out, segments, labels, weights = order_batch(batch, np.random.default_rng(1), VOCAB)
    assert labels[:400].mean() == pytest.approx(0.5, abs=0.06) and weights[:400].all() and weights[400] == 0
    for row, (r, swapped) in enumerate(zip(rows[:400], labels)):
        first = r.index(sep)
        a, b = r[1:first], r[first + 1 : -1]
        want = [cls] + (b + [sep] + a if swapped else a + [sep] + b) + [sep]
        assert out[row, : len(r)].tolist() == want
        assert segments[row, : len(r)].tolist() == [0] * (len(want[: want.index(sep)]) + 1) + [1] * (
            len(r) - want.index(sep) - 1
        )
        assert (out[row, len(r) :] == 0).all() and (segments[row, len(r) :] == 0).all()
