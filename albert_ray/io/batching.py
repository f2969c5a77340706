"""Batch making in numpy: padding, length-bucketed shuffled epochs, a worker's share of them.

Numpy only, at the bottom of the import graph: tasks (target padding), prediction (window
batches) and training (epochs) use it without importing each other.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Batch = tuple[np.ndarray, np.ndarray]


def pad_batch(rows: Sequence[Sequence[int]], value: int = 0, multiple: int = 1) -> np.ndarray:
    """Right-pad int sequences to the longest one (rounded up to ``multiple``)."""
    width = max(len(r) for r in rows)
    width = -(-width // multiple) * multiple
    out = np.full((len(rows), width), value, dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def make_batches(
    rows: Sequence[dict],
    batch_size: int,
    seed: int,
    epoch: int,
    pad_targets: Callable,
    bucket: int = 50,
    unpadded: bool = False,
    pad_to: int | None = None,
) -> list[tuple]:
    """Shuffled, length-bucketed, per-batch padded batches of ``{"token_ids", "target"}`` rows.

    Rows are shuffled, cut into pools of ``bucket`` batches, sorted by length inside each pool
    and batched, and the batch order is shuffled: little padding, still random. The order is a
    function of ``(seed, epoch)`` only, which is what makes exact resume possible. ``bucket=0``
    with ``pad_to`` gives the reference's fixed padding instead; ``unpadded`` leaves the id
    lists as they are (for splitting a global batch between workers first).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(rows))
    pool = batch_size * max(bucket, 1)
    batches: list[tuple] = []
    for p in range(0, len(order), pool):
        chunk = (
            sorted(order[p : p + pool], key=lambda i: len(rows[i]["token_ids"]))
            if bucket
            else order[p : p + pool]
        )
        for b in range(0, len(chunk), batch_size):
            idx = chunk[b : b + batch_size]
            ids = [rows[i]["token_ids"] for i in idx]
            targets = [rows[i]["target"] for i in idx]
            if pad_to and not unpadded:  # fixed padding: ids to pad_to, sequence targets too
                targets = [
                    list(y) + [-1] * (pad_to - len(y)) if isinstance(y, list) and len(y) == len(x) else y
                    for y, x in zip(targets, ids)
                ]
                ids = [list(x) + [0] * (pad_to - len(x)) for x in ids]
            batches.append((ids if unpadded else pad_batch(ids), pad_targets(targets)))
    shuffled = rng.permutation(len(batches))
    return [batches[i] for i in shuffled]


def worker_batches(
    rows: Sequence[dict],
    batch_size: int,
    seed: int,
    epoch: int,
    pad_targets: Callable,
    rank: int = 0,
    world: int = 1,
    split_global: bool = False,
    bucket_by_length: bool = True,
    pad_to: int | None = None,
) -> list[Batch]:
    """One worker's batches for an epoch.

    ``split_global=False``: the rows are this worker's own shard, batched as they are.
    ``split_global=True``: every worker holds all rows; the epoch is planned in global batches of
    ``batch_size * world`` and this worker takes its slice of each, so ``world`` workers at
    ``batch_size`` take exactly the steps of one worker at ``world * batch_size``.
    """
    if not split_global or world == 1:
        if not bucket_by_length:
            return make_batches(rows, batch_size, seed, epoch, pad_targets, bucket=0, pad_to=pad_to)
        return make_batches(rows, batch_size, seed, epoch, pad_targets)
    plan = make_batches(rows, batch_size * world, seed, epoch, lambda targets: list(targets), unpadded=True)
    part = slice(rank * batch_size, (rank + 1) * batch_size)
    return [(pad_batch(ids[part]), pad_targets(targets[part])) for ids, targets in plan if ids[part]]
