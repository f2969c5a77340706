"""The training loop's shared parts, used by fine-tuning and pre-training alike: the worker's
context (rank, rows, strategy, resume checkpoint, reporter), the loop state :class:`TrainState`,
saving and restoring the resume state, where reports and checkpoints go (Ray Train or a local
folder), and the collectives every worker calls together.

TensorFlow and Ray are imported inside the functions that need them: the driver imports this
module for :class:`TrainState` alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from albert_ray import modeldir

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """The loop's position and record; ``train_state.json`` in a checkpoint."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of epoch ``epoch`` completed (a mid-epoch checkpoint)
    best_score: float = -1.0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    resumes: list[dict] = field(default_factory=list)
    skipped_steps: int = 0  # float16 loss-scale overflows
    is_best: bool = False  # the checkpoint's weights are the best so far
    final: bool = False
    steps: int | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainState":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, folder: str | Path) -> "TrainState":
        return cls.from_json(modeldir.read_resume_state(folder)[0])


def save_resume_state(folder: str | Path, state: TrainState, optimizer) -> None:
    """The loop state and the optimizer's variables, beside a checkpoint's weights."""
    from albert_ray.runtime.optimizer import optimizer_state

    modeldir.write_resume_state(folder, state.to_json(), [v.numpy() for v in optimizer_state(optimizer)])


def restore_resume_state(folder: str | Path, optimizer) -> TrainState:
    """The loop state saved in ``folder``; the optimizer's variables assigned from it (a
    checkpoint written without them restores the state only)."""
    from albert_ray.runtime.optimizer import optimizer_state

    text, values = modeldir.read_resume_state(folder)
    if values is not None:
        for var, value in zip(optimizer_state(optimizer), values, strict=True):
            var.assign(value)
    return TrainState.from_json(text)


# ---- where reports and checkpoints go ---------------------------------------------------------
class Reporter:
    """Where metrics and checkpoints go."""

    def report(self, metrics: dict, checkpoint: Callable[[str], None] | None) -> None:
        """``checkpoint(folder)`` writes a checkpoint into ``folder`` when called."""
        raise NotImplementedError


class RayReporter(Reporter):
    """``ray.train.report``; rank 0 attaches the checkpoint (every rank must report)."""

    def __init__(self, rank: int):
        self.rank = rank

    def report(self, metrics, checkpoint):
        import ray.train

        if self.rank != 0 or checkpoint is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint(tmp)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class LocalReporter(Reporter):
    """In-process runs: only the final checkpoint is written, to ``output``."""

    def __init__(self, output: str | None):
        self.output = output

    def report(self, metrics, checkpoint):
        if checkpoint is not None and metrics.get("final") and self.output:
            checkpoint(self.output)


# ---- the worker's context ---------------------------------------------------------------------
@dataclass
class Context:
    rank: int
    world: int
    rows: list
    strategy: Any
    resume: Any  # a ray.train.Checkpoint or None
    reporter: Reporter


def worker_context(local_rows: list | None, local_output: str | None, row: Callable[[dict], Any]) -> Context:
    """This process's context when ``local_rows`` are given (an in-process run, no Ray);
    else Ray Train's: rank, world, the worker's Ray Data shard (each row through ``row``),
    a multi-worker strategy when there are several, the checkpoint to resume from."""
    import tensorflow as tf

    if local_rows is not None:
        return Context(0, 1, local_rows, tf.distribute.get_strategy(), None, LocalReporter(local_output))
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    rows = [row(r) for r in ray.train.get_dataset_shard("train").iter_rows()]
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if world > 1 else tf.distribute.get_strategy()
    return Context(rank, world, rows, strategy, ray.train.get_checkpoint(), RayReporter(rank))


# ---- collectives: every worker must call them together ------------------------------------------
def across_workers(strategy, values: Sequence[float]) -> np.ndarray:
    """Every worker's ``values``, one row a worker in rank order. float64: counts stay exact far
    past a billion rows."""
    import tensorflow as tf

    value = strategy.run(lambda: tf.constant([list(values)], tf.float64))
    return strategy.gather(value, axis=0).numpy()


def min_across_workers(strategy, n: int) -> int:
    """The smallest ``n`` of any worker (the steps every worker can run in step)."""
    return int(across_workers(strategy, [n]).min())


def sums_across_workers(strategy, values: Sequence[float]) -> np.ndarray:
    """The element-wise sum of every worker's ``values``."""
    return across_workers(strategy, values).sum(axis=0)


def from_rank0(strategy, value: float) -> float:
    """Worker 0's ``value``, on every worker."""
    return float(across_workers(strategy, [value])[0, 0])
