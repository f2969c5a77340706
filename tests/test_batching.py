"""Batch making: padding, length buckets, reproducible epochs, and the worker split that makes N
workers at batch b take exactly the steps of one worker at batch N*b."""

import numpy as np

from albert_ray.io.batching import make_batches, pad_batch, worker_batches

ROWS = [{"token_ids": list(range(1, n + 1)), "target": n} for n in [5, 50, 6, 49, 7, 48, 8, 47] * 10]


def _targets(t):
    return np.asarray(t)


def test_pad_batch_pads_right_to_the_longest_or_a_multiple():
    assert pad_batch([[1, 2, 3], [4]]).tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad_batch([[1, 2, 3], [4]], value=-1, multiple=4).tolist() == [[1, 2, 3, -1], [4, -1, -1, -1]]
    assert pad_batch([[7]]).dtype == np.int32


def test_make_batches_bucket_by_length_and_keep_every_row():
    batches = make_batches(ROWS, 8, seed=1, epoch=0, pad_targets=_targets)
    assert sum(len(y) for _, y in batches) == 80
    assert sorted(int(v) for _, y in batches for v in y) == sorted(r["target"] for r in ROWS)
    padded = sum(ids.size for ids, _ in batches)
    assert padded < 1.1 * sum(len(r["token_ids"]) for r in ROWS)  # little padding
    again = make_batches(ROWS, 8, seed=1, epoch=0, pad_targets=_targets)
    assert all((a[0] == b[0]).all() for a, b in zip(batches, again))  # reproducible
    other = make_batches(ROWS, 8, seed=1, epoch=1, pad_targets=_targets)
    assert [y.tolist() for _, y in other] != [y.tolist() for _, y in batches]  # a new order each epoch


def test_fixed_padding_pads_ids_and_sequence_targets_to_max_len():
    rows = [{"token_ids": [1, 2], "target": [0, 1]}, {"token_ids": [3], "target": [2]}]
    ((ids, y),) = make_batches(rows, 2, seed=0, epoch=0, pad_targets=_targets, bucket=0, pad_to=4)
    assert sorted(ids.tolist()) == [[1, 2, 0, 0], [3, 0, 0, 0]]
    assert sorted(y.tolist()) == [[0, 1, -1, -1], [2, -1, -1, -1]]


def test_two_workers_split_each_global_batch_of_one_worker():
    one = worker_batches(ROWS, 16, seed=3, epoch=2, pad_targets=_targets, split_global=True)
    halves = [
        worker_batches(ROWS, 8, seed=3, epoch=2, pad_targets=_targets, rank=r, world=2, split_global=True)
        for r in range(2)
    ]
    assert len(halves[0]) == len(halves[1]) == len(one) == 5
    for single, a, b in zip(one, *halves):
        assert sorted(single[1].tolist()) == sorted(a[1].tolist() + b[1].tolist())
    # each worker's own shard (split_global=False) is batched as it is
    own = worker_batches(ROWS[:40], 8, seed=3, epoch=2, pad_targets=_targets, rank=1, world=2)
    assert sum(len(y) for _, y in own) == 40
