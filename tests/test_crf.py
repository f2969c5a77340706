"""CRF log-likelihood, Viterbi and marginals against brute-force enumeration."""

import itertools

import numpy as np
import pytest

from albert_ray.tasks.crf import CRF, marginals, viterbi_decode


def path_score(em, tr, st, en, path):
    s = st[path[0]] + en[path[-1]] + sum(em[t, p] for t, p in enumerate(path))
    return s + sum(tr[a, b] for a, b in zip(path[:-1], path[1:]))


@pytest.mark.parametrize("seed", range(4))
def test_viterbi_and_marginals_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    t, k = 5, 3
    em, tr, st, en = rng.normal(size=(t, k)), rng.normal(size=(k, k)), rng.normal(size=k), rng.normal(size=k)
    paths = list(itertools.product(range(k), repeat=t))
    scores = np.array([path_score(em, tr, st, en, p) for p in paths])
    best, best_score = viterbi_decode(em, tr, st, en)
    assert tuple(best) == paths[int(scores.argmax())]
    assert best_score == pytest.approx(scores.max())
    probs = np.exp(scores - np.logaddexp.reduce(scores))
    expected = np.zeros((t, k))
    for p, pr in zip(paths, probs):
        for i, tag in enumerate(p):
            expected[i, tag] += pr
    np.testing.assert_allclose(marginals(em, tr, st, en), expected, atol=1e-10)


def test_log_likelihood_equals_brute_force_with_padding():
    rng = np.random.default_rng(7)
    k, t = 3, 4
    crf = CRF(k)
    crf.build((None, None, k))
    tr, st, en = rng.normal(size=(k, k)), rng.normal(size=k), rng.normal(size=k)
    crf.transitions.assign(tr)
    crf.start.assign(st)
    crf.end.assign(en)
    em = rng.normal(size=(2, t, k)).astype(np.float32)
    tags = np.array([[0, 2, 1, 1], [2, 0, -1, -1]])  # second sequence has length 2
    got = crf.log_likelihood(em, tags).numpy()
    for b, length in enumerate([4, 2]):
        e = em[b, :length].astype(np.float64)
        scores = [path_score(e, tr, st, en, p) for p in itertools.product(range(k), repeat=length)]
        gold = path_score(e, tr, st, en, list(tags[b, :length]))
        assert got[b] == pytest.approx(gold - np.logaddexp.reduce(scores), abs=1e-4)
    assert np.all(crf.loss(tags, em).numpy() > 0)


def test_batched_viterbi_and_marginals_equal_per_sequence():
    from albert_ray.tasks.crf import marginals_batch, viterbi_batch

    rng = np.random.default_rng(3)
    k = 4
    tr, st, en = rng.normal(size=(k, k)), rng.normal(size=k), rng.normal(size=k)
    lengths = np.array([6, 1, 3, 6])
    em = rng.normal(size=(4, 6, k))
    paths = viterbi_batch(em, lengths, tr, st, en)
    probs = marginals_batch(em, lengths, tr, st, en)
    for i, n in enumerate(lengths):
        assert paths[i] == viterbi_decode(em[i, :n], tr, st, en)[0]
        np.testing.assert_allclose(probs[i, :n], marginals(em[i, :n], tr, st, en), atol=1e-10)
