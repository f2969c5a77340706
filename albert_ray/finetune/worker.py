"""The training worker: ``train_loop_per_worker`` for Ray Train's ``TensorflowTrainer``
(``MultiWorkerMirroredStrategy``), also run in-process without Ray.

Read top-down like Ray's own ``train_func``: the worker's context (rank, rows, strategy, resume
checkpoint), :func:`build_training` (model, optimizer, compiled step), :func:`restore`,
:func:`run_epoch`, and a :class:`Reporter` that is Ray's or a local folder. The loop's state is a
typed :class:`TrainState` saved as ``train_state.json`` in every checkpoint.

Data order is a function of (seed, epoch) only, so a run resumed from a checkpoint taken after
``k`` steps continues with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import functools
import logging
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from albert_ray import modeldir
from albert_ray.finetune.config import JobConfig
from albert_ray.io.batching import worker_batches
from albert_ray.io.training_files import Example
from albert_ray.model.tokenization import Vocab
from albert_ray.reports.scalars import Scalars
from albert_ray.runtime import loop
from albert_ray.runtime.attach import configure_tf
from albert_ray.runtime.hardware import gpu_supports_bf16, training_precision
from albert_ray.runtime.loop import Context, TrainState
from albert_ray.runtime.progress import StepBar
from albert_ray.spec import ModelSpec
from albert_ray.tasks.registry import Task, task_for

log = logging.getLogger(__name__)

# No weight decay on LayerNorm, biases (keras-bert's attention biases are ``_bq`` ... ``_bo``,
# its feed-forward's ``_b1`` / ``_b2``) and embeddings, as BERT's optimizer.
NO_WEIGHT_DECAY = ("gamma", "beta", "bias", "_b[qkvo12]", "embeddings")


# ---- configuration and state ---------------------------------------------------------------
@dataclass(frozen=True)
class WorkerConfig:
    """What every worker gets from the driver. ``rows`` only in-process (Ray workers read their
    Ray Data shard); ``local_output`` is where an in-process run writes its model directory."""

    job: JobConfig
    spec: ModelSpec
    vocab: Vocab
    dev: list[Example]
    tf_threads: int = 0
    rows: list[dict] | None = None
    local_output: str | None = None
    progress_bar: bool = False  # the driver writes to a terminal: a step bar on rank 0
    tensorboard_dir: str | None = None  # where rank 0 writes TensorBoard scalars

    @property
    def policy(self) -> str:
        """The Keras dtype policy of training on this worker's hardware (``auto`` resolved)."""
        return training_precision(
            self.job.policy, self.spec.encoder.layout, gpu_bf16=self.job.train.use_gpu and gpu_supports_bf16()
        )


@dataclass(frozen=True)
class Schedule:
    """Step arithmetic of a run: optimizer steps per epoch and in all, warmup, peak rate."""

    steps_per_epoch: int
    total_steps: int
    warmup: int
    peak_lr: float
    global_rows: int

    @classmethod
    def of(cls, job: JobConfig, shard_rows: int, world: int, global_rows: int | None = None) -> "Schedule":
        """``shard_rows``: the smallest worker's rows, which set the steps of an epoch (under
        ``train.shard: deterministic`` every worker holds all rows); ``global_rows``: the run's
        rows, as reported (default: as if every shard were the smallest)."""
        t = job.train
        # "deterministic": every worker holds all rows; "ray": each holds its own shard
        steps_rows = shard_rows * (world if t.shard == "ray" else 1)
        steps_per_epoch = math.ceil(steps_rows / (t.batch_size * world * t.grad_accum_steps))
        total = max(1, steps_per_epoch * t.epochs)
        return cls(
            steps_per_epoch,
            total,
            int(total * t.warmup_ratio),
            learning_rate(job),
            steps_rows if global_rows is None else global_rows,
        )


def learning_rate(job: JobConfig) -> float:
    """Peak learning rate for the global batch (explicit policy: ``train.lr_scaling``)."""
    t = job.train
    if t.lr_scaling == "linear":
        return t.learning_rate * t.batch_size * t.num_workers * t.grad_accum_steps / t.lr_reference_batch
    return t.learning_rate


# ---- building ----------------------------------------------------------------------------------
@dataclass
class Training:
    """A model with its optimizer and compiled step ``step(ids, targets, apply) -> loss``."""

    model: Any
    optimizer: Any
    step: Callable
    mixed: bool

    @property
    def steps_done(self) -> int:
        return int(self.optimizer.iterations.numpy())


def worker_context(cfg: WorkerConfig) -> Context:
    """In this process (``cfg.rows``) or Ray Train's worker, its shard's rows as lists."""
    return loop.worker_context(
        cfg.rows,
        cfg.local_output,
        lambda r: {
            "token_ids": np.asarray(r["token_ids"]).tolist(),
            "target": np.asarray(r["target"]).tolist(),
        },
    )


def build_training(cfg: WorkerConfig, strategy, schedule: Schedule) -> Training:
    """Build and initialise the model, the AdamW optimizer with warmup and linear decay, and the
    training step (accumulation and loss scaling included) under ``strategy``'s scope."""
    import tensorflow as tf

    from albert_ray.model.encoder import dtype_policy
    from albert_ray.runtime.optimizer import WarmupLinearDecay, adamw

    t, spec = cfg.job.train, cfg.spec
    with strategy.scope():
        with dtype_policy(cfg.policy):
            model = modeldir.new_model(
                spec,
                seed=t.seed,
                checkpoint=cfg.job.model.start_checkpoint(),
            )
        optimizer = adamw(
            model,
            WarmupLinearDecay(schedule.peak_lr, schedule.warmup, schedule.total_steps),
            t.weight_decay,
            NO_WEIGHT_DECAY,
            cfg.policy,
        )
        accumulators = (
            [tf.Variable(tf.zeros_like(v), trainable=False) for v in model.trainable_variables]
            if t.grad_accum_steps > 1
            else []
        )
    step = _compile_step(model, optimizer, task_for(spec).loss(model), accumulators, strategy, cfg)
    return Training(model, optimizer, step, cfg.policy == "mixed_float16")


def _compile_step(model, optimizer, loss_fn, accumulators, strategy, cfg: WorkerConfig):
    import tensorflow as tf

    t = cfg.job.train
    scaled_loss = cfg.policy == "mixed_float16"

    def replica_step(ids, y, apply):
        with tf.GradientTape() as tape:
            pred = model([ids, tf.zeros_like(ids)], training=True)
            per_example = tf.cast(loss_fn(y, pred), tf.float32)
            n = tf.cast(tf.shape(per_example)[0], tf.float32)
            total_n = tf.distribute.get_replica_context().all_reduce("sum", n)
            loss = tf.reduce_sum(per_example) / total_n
            scaled = optimizer.get_scaled_loss(loss) if scaled_loss else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        if scaled_loss:
            grads = optimizer.get_unscaled_gradients(grads)
        if not accumulators:
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        for acc, g in zip(accumulators, grads):
            acc.assign_add(tf.convert_to_tensor(g) / t.grad_accum_steps)  # embeddings give IndexedSlices

        def apply_and_reset():
            optimizer.apply_gradients(zip([tf.identity(a) for a in accumulators], model.trainable_variables))
            for acc in accumulators:
                acc.assign(tf.zeros_like(acc))
            return tf.constant(0)

        tf.cond(apply, apply_and_reset, lambda: tf.constant(0))
        return loss

    sig = [
        tf.TensorSpec([None, None], tf.int32),
        task_for(cfg.spec).target_signature(cfg.spec),
        tf.TensorSpec([], tf.bool),
    ]

    @tf.function(input_signature=sig, jit_compile=t.xla or None)
    def step(ids, y, apply):
        return strategy.reduce("sum", strategy.run(replica_step, args=(ids, y, apply)), axis=None)

    return step


# ---- checkpoints ---------------------------------------------------------------------------------
def write_checkpoint(
    folder: str | Path, tr: Training, cfg: WorkerConfig, spec: ModelSpec, state: TrainState
) -> None:
    """A model directory plus the resume state (loop state, optimizer slots)."""
    modeldir.save(folder, tr.model, spec, cfg.vocab, cfg.job.to_dict())
    loop.save_resume_state(folder, state, tr.optimizer)


def restore(tr: Training, checkpoint) -> tuple[TrainState, list | None]:
    """The loop state and best weights so far; weights and optimizer slots from ``checkpoint``."""
    if checkpoint is None:
        return TrainState(), None
    with checkpoint.as_directory() as d:
        tr.model.load_weights(str(Path(d) / modeldir.WEIGHTS_FILE))
        state = loop.restore_resume_state(d, tr.optimizer)
    best = tr.model.get_weights() if state.is_best else None
    state.resumes.append({"epoch": state.epoch, "batch": state.batch, "step": tr.steps_done})
    log.info(
        "resumed from checkpoint at epoch %d, batch %d (optimizer step %d, best dev %.4f)",
        state.epoch + 1,
        state.batch,
        tr.steps_done,
        state.best_score,
    )
    return state, best


# ---- the loop ------------------------------------------------------------------------------------
def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker entry point; ``config["worker"]`` is a :class:`WorkerConfig`."""
    cfg: WorkerConfig = config["worker"]

    configure_tf(cfg.tf_threads)
    from tensorflow import keras

    from albert_ray.inference.labeler import Labeler
    from albert_ray.runtime.optimizer import current_learning_rate

    ctx = worker_context(cfg)
    t, spec, task = cfg.job.train, cfg.spec, task_for(cfg.spec)
    keras.utils.set_random_seed(t.seed)
    if ctx.world > 1 and t.shard == "ray":  # shards may differ by a row (attach.every_row_split)
        shards = loop.across_workers(ctx.strategy, [len(ctx.rows)])
        schedule = Schedule.of(cfg.job, int(shards.min()), ctx.world, int(shards.sum()))
    else:
        schedule = Schedule.of(cfg.job, len(ctx.rows), ctx.world)
    if ctx.rank == 0:
        _log_run(cfg, schedule, ctx.world)
    tr = build_training(cfg, ctx.strategy, schedule)
    state, best = restore(tr, ctx.resume)
    labeler = Labeler(tr.model, spec, cfg.vocab, batch_size=max(32, t.batch_size))
    checkpoint = functools.partial(write_checkpoint, tr=tr, cfg=cfg, spec=spec, state=state)
    scalars = Scalars(cfg.tensorboard_dir if ctx.rank == 0 else None)
    for epoch in range(state.epoch, t.epochs):
        metrics = run_epoch(tr, ctx, cfg, task, state, epoch, checkpoint)
        score = dev_score(labeler, task, cfg, ctx)
        improved = score > state.best_score
        if improved:
            state.best_score, best, state.bad_epochs = score, tr.model.get_weights(), 0
        else:
            state.bad_epochs += 1
        metrics.update(dev_score=score, best_dev_score=state.best_score)
        state.history.append(metrics)
        if ctx.rank == 0:
            log.info(
                "epoch %d/%d: loss %.4f, dev %s %.4f (best %.4f), %.1f ex/s per worker",
                epoch + 1,
                t.epochs,
                metrics["train_loss"],
                task.name,
                score,
                state.best_score,
                metrics["examples_per_second"],
            )
        scalars.write(epoch + 1, _scalars(metrics, score, current_learning_rate(tr.optimizer)))
        state.epoch, state.batch, state.is_best = epoch + 1, 0, improved
        ctx.reporter.report(metrics, checkpoint)
        if state.bad_epochs > t.patience:
            if ctx.rank == 0:
                log.info("early stopping: no dev improvement for %d epochs", state.bad_epochs)
            break
    scalars.close()
    if best is not None:
        tr.model.set_weights(best)
    spec = tune_on_dev(labeler, task, cfg, ctx)
    state.final, state.is_best, state.steps = True, True, tr.steps_done
    ctx.reporter.report(
        {
            "epoch": state.epoch,
            "dev_score": state.best_score,
            "best_dev_score": state.best_score,
            "final": True,
            "steps": state.steps,
        },
        functools.partial(write_checkpoint, tr=tr, cfg=cfg, spec=spec, state=state),
    )


def _log_run(cfg: WorkerConfig, schedule: Schedule, world: int) -> None:
    t = cfg.job.train
    log.info(
        "run %s: task=%s, %d training rows, %d workers (%s shards), per-worker batch %d x %d accumulation, "
        "global batch %d, %d optimizer steps/epoch, %d epochs, peak lr %.2e, warmup %d steps, %s",
        cfg.job.name,
        cfg.spec.task,
        schedule.global_rows,
        world,
        t.shard,
        t.batch_size,
        t.grad_accum_steps,
        t.batch_size * world * t.grad_accum_steps,
        schedule.steps_per_epoch,
        t.epochs,
        schedule.peak_lr,
        schedule.warmup,
        cfg.policy,
    )


def _scalars(metrics: dict, score: float, learning_rate: float) -> dict:
    """One epoch's TensorBoard scalars."""
    return {
        "loss/train": metrics["train_loss"],
        "dev/score": score,
        "learning_rate": learning_rate,
        "loss_scale": metrics.get("loss_scale"),
        "examples_per_second": metrics["examples_per_second"],
    }


def run_epoch(
    tr: Training,
    ctx: Context,
    cfg: WorkerConfig,
    task: Task,
    state: TrainState,
    epoch: int,
    checkpoint: Callable[[str], None],
) -> dict:
    """Train one epoch (from ``state.batch`` when resuming into it); checkpoint every
    ``train.checkpoint_every_steps`` optimizer steps. Returns the epoch's training metrics."""
    import tensorflow as tf

    t = cfg.job.train
    began, losses, examples = time.time(), [], 0
    batches = worker_batches(
        ctx.rows,
        batch_size=t.batch_size,
        seed=t.seed,
        epoch=epoch,
        pad_targets=task.pad_targets,
        rank=ctx.rank,
        world=ctx.world,
        split_global=t.shard == "deterministic",
        bucket_by_length=t.bucket_by_length,
        pad_to=cfg.spec.max_len,
    )
    # every worker must run the same number of steps (collectives): the smallest shard decides
    n = (
        loop.min_across_workers(ctx.strategy, len(batches))
        if ctx.world > 1 and t.shard == "ray"
        else len(batches)
    )
    n -= n % t.grad_accum_steps if n >= t.grad_accum_steps else 0
    first = state.batch if epoch == state.epoch else 0
    bar = StepBar(
        cfg.progress_bar and ctx.rank == 0, n - first, f"epoch {epoch + 1}/{t.epochs}", cfg.rows is None
    )
    for i in range(first, n):
        ids, y = batches[i]
        apply = (i + 1) % t.grad_accum_steps == 0
        scale = float(tr.optimizer.loss_scale) if tr.mixed and apply else None
        losses.append(float(tr.step(tf.constant(ids), tf.constant(y), tf.constant(apply))))
        bar.step(losses[-1])
        if scale is not None and float(tr.optimizer.loss_scale) < scale:
            # dynamic loss scaling: gradients overflowed in float16, the update was skipped and
            # the scale halved (the step still counts in the learning-rate schedule)
            state.skipped_steps += 1
        examples += len(ids)
        if ctx.rank == 0 and t.log_every and (i + 1) % t.log_every == 0 and bar.bar is None:
            log.info(
                "epoch %d batch %d/%d loss %.4f (%.1f ex/s per worker)",
                epoch + 1,
                i + 1,
                n,
                np.mean(losses[-t.log_every :]),
                examples / (time.time() - began),
            )
        if (
            t.checkpoint_every_steps
            and apply
            and (i + 1) < n
            and tr.steps_done % t.checkpoint_every_steps == 0
        ):
            state.epoch, state.batch, state.is_best = epoch, i + 1, False
            last = state.history[-1]["dev_score"] if state.history else -1.0
            ctx.reporter.report({"epoch": epoch + 1, "dev_score": last, "steps": tr.steps_done}, checkpoint)
    bar.close()
    seconds = time.time() - began
    metrics = {
        "epoch": epoch + 1,
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "examples_per_second": examples / max(seconds, 1e-9),
        "steps": tr.steps_done,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if tr.mixed:
        metrics.update(loss_scale=float(tr.optimizer.loss_scale), skipped_steps=state.skipped_steps)
    return metrics


def dev_score(labeler, task: Task, cfg: WorkerConfig, ctx: Context) -> float:
    """Rank 0 evaluates dev; every worker gets its score (the same early-stopping decision)."""
    score = -1.0
    if ctx.rank == 0 and cfg.dev:
        _, report = task.report(cfg.dev, labeler.predict([e.text for e in cfg.dev]), cfg.spec)
        score = task.dev_score(report)
    return loop.from_rank0(ctx.strategy, score) if ctx.world > 1 else score


def tune_on_dev(labeler, task: Task, cfg: WorkerConfig, ctx: Context) -> ModelSpec:
    """The spec with the settings the task tunes on dev (e.g. a multi-label threshold)."""
    spec = cfg.spec
    if ctx.rank != 0 or not cfg.dev:
        return spec
    tuned = task.tune(spec, labeler.predict([e.text for e in cfg.dev]), cfg.dev)
    if tuned != spec:
        log.info("tuned on dev: %s", {k: v for k, v in tuned.to_dict().items() if v != spec.to_dict()[k]})
    return tuned
