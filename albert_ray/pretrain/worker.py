"""The pre-training worker: ``pretrain_loop_per_worker`` for Ray Train (also run in this process):
build the MLM model (initialised, or from a checkpoint), restore, train epochs of dynamically
masked batches within the step and wall-clock :class:`Budget`, evaluate on the held-out slice,
report checkpoints in the published layout. The loop's shared parts (context, state, resume
files, reporters, collectives, the optimizer) are :mod:`albert_ray.runtime.loop` and
:mod:`albert_ray.runtime.optimizer`, the same as fine-tuning's.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from albert_ray.model.encoder_config import EncoderConfig
from albert_ray.model.tokenization import Vocab
from albert_ray.pretrain.config import PretrainConfig
from albert_ray.pretrain.corpus import too_small
from albert_ray.pretrain.masking import is_heldout, make_batch, special_ids, token_counts
from albert_ray.pretrain.mlm import (
    OutputVocabulary,
    build_mlm_model,
    load_head,
    masked_loss,
    order_loss,
    save_pretrained,
)
from albert_ray.runtime import loop
from albert_ray.runtime.attach import configure_tf
from albert_ray.runtime.hardware import gpu_supports_bf16, training_precision
from albert_ray.runtime.loop import TrainState
from albert_ray.runtime.progress import StepBar

log = logging.getLogger(__name__)


# ---- the model ------------------------------------------------------------------------------
def init_std(encoder: EncoderConfig, init_range: float | None = None) -> float:
    """The standard deviation of a random start: ``init_range`` if given, else
    ``max(initializer_range, 1/sqrt(hidden_size))``.

    The published 0.02 is tuned for H >= 768. At H=128 it starves the signal: a block's kernels
    scale their input by 0.02 * sqrt(128) = 0.23, the factorised token embedding reaches the
    residual stream at 0.02 * 0.02 * sqrt(64) = 0.003 against 0.02 for the position embedding,
    and masked-LM training sits on the unigram plateau. Measured on the sample encoder (600 steps,
    batch 32, 1.6M characters): held-out masked-token accuracy 0.054 at 0.02 (the unigram
    baseline), 0.143 at 0.1; 0.02 needed 5,300 steps to reach 0.132.
    """
    return init_range if init_range is not None else max(encoder.initializer_range, encoder.hidden_size**-0.5)


# ---- the worker loop -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainWorker:
    cfg: PretrainConfig
    encoder: EncoderConfig
    vocab: Vocab
    tf_threads: int = 0
    rows: list | None = None  # in-process runs: the sequences
    local_output: str | None = None
    progress_bar: bool = False  # the driver writes to a terminal: a step bar on rank 0
    output: OutputVocabulary | None = (
        None  # the MLM softmax's ids (train.output_vocabulary=corpus): set by the loop
    )

    @property
    def policy(self) -> str:
        """The Keras dtype policy of pre-training on this worker's hardware (``auto`` resolved)."""
        t = self.cfg.train
        return training_precision(
            t.precision, self.encoder.layout, gpu_bf16=t.use_gpu and gpu_supports_bf16()
        )


def pretrain_loop_per_worker(config: dict) -> None:
    """Ray Train worker (also in-process): build, restore, train epochs within the budget, report."""
    from tensorflow import keras

    w: PretrainWorker = config["worker"]
    configure_tf(w.tf_threads)
    cfg, t = w.cfg, w.cfg.train
    ctx = loop.worker_context(
        w.rows and [np.asarray(r, np.int32) for r in w.rows],
        w.local_output,
        lambda r: np.asarray(r["token_ids"], np.int32),
    )
    ctx.rows.sort(
        key=lambda r: r.tobytes()
    )  # Ray Data's order varies between attempts; a resumed epoch skips by position
    heldout = [r for r in ctx.rows if is_heldout(r, t.heldout_permille)]
    train_rows = [r for r in ctx.rows if not is_heldout(r, t.heldout_permille)]
    keras.utils.set_random_seed(t.seed)

    # the workers' totals (collectives: every worker asks): held-out metrics, the header
    combine = None if ctx.world == 1 else functools.partial(loop.sums_across_workers, ctx.strategy)
    sequences, held_out = (int(n) for n in (combine or np.asarray)([len(ctx.rows), len(heldout)]))
    steps_per_epoch = len(train_rows) // t.batch_size
    if ctx.world > 1:  # every worker must run the same number of steps: the smallest shard decides
        steps_per_epoch = loop.min_across_workers(ctx.strategy, steps_per_epoch)
    if steps_per_epoch == 0:  # in this process; through Ray, require_enough_text refused it first
        raise too_small(cfg, len(train_rows) * ctx.world, ctx.world)
    w = replace(w, output=_output_vocabulary(ctx.rows, w, combine))
    if not held_out and ctx.rank == 0:
        log.warning(
            "no held-out sequence among %d (train.heldout_permille=%d): held-out loss and accuracy will read "
            "nan; raise train.heldout_permille",
            sequences,
            t.heldout_permille,
        )
    cap = max(1, steps_per_epoch * t.epochs)
    cap = min(cap, t.max_steps) if t.max_steps else cap
    model, optimizer, step, budget = _build_pretraining(w, ctx.strategy, cap)
    state = _restore_pretraining(model, optimizer, w, ctx.resume)
    if ctx.rank == 0:
        _log_header(w, sequences, held_out, ctx.world, steps_per_epoch, cap)

    def checkpoint(folder):
        save_pretrained(
            folder,
            model,
            w.encoder,
            w.vocab,
            {"history": state.history, "resumes": state.resumes, "precision": w.policy},
        )
        loop.save_resume_state(folder, state, optimizer)

    def midway(epoch: int, batch: int) -> None:  # a checkpoint within the epoch, resumed at ``batch``
        state.epoch, state.batch = epoch, batch
        ctx.reporter.report(
            {"epoch": epoch + 1, "steps": int(optimizer.iterations.numpy()), "final": False}, checkpoint
        )

    for epoch in range(state.epoch, t.epochs):
        first = state.batch if epoch == state.epoch else 0
        metrics = _pretrain_epoch(
            step,
            optimizer,
            train_rows,
            w,
            rank=ctx.rank,
            epoch=epoch,
            first=first,
            steps=steps_per_epoch,
            budget=budget,
            midway=functools.partial(midway, epoch),
        )
        metrics.update(evaluate_mlm(model, heldout, w, combine), sequences=sequences)
        state.history.append(metrics)
        state.epoch, state.batch = epoch + 1, 0
        if ctx.rank == 0:
            _log_epoch(epoch, metrics)
        ctx.reporter.report({**metrics, "final": budget.hit or epoch + 1 == t.epochs}, checkpoint)
        if budget.hit:
            break


def _log_header(w: PretrainWorker, sequences: int, held_out: int, world: int, steps_per_epoch: int, cap: int):
    t = w.cfg.train
    log.info(
        "pre-training %s: %d sequences (%d held out), %d workers x batch %d, %d steps/epoch, at most %d steps"
        "%s, %s, MLM softmax over %s",
        w.cfg.name,
        sequences,
        held_out,
        world,
        t.batch_size,
        steps_per_epoch,
        cap,
        f", {t.max_minutes:g} min" if t.max_minutes else "",
        w.policy,
        f"all {len(w.vocab):,} vocabulary ids"
        if w.output is None
        else f"the {len(w.output.ids):,} of {len(w.vocab):,} vocabulary ids the corpus holds",
    )


def _log_epoch(epoch: int, metrics: dict) -> None:
    order = metrics.get("heldout_order_accuracy")
    log.info(
        "epoch %d: loss %.4f, held-out MLM loss %.4f, masked-token accuracy %.4f%s, %.1f sequences/s",
        epoch + 1,
        metrics["train_loss"],
        metrics["heldout_loss"],
        metrics["heldout_accuracy"],
        "" if order is None else f", sentence-order accuracy {order:.4f}",
        metrics["sequences_per_second"],
    )


def _output_vocabulary(rows, w: PretrainWorker, combine) -> OutputVocabulary | None:
    """The ids the workers' sequences (held-out ones too) hold, for ``train.output_vocabulary=corpus``."""
    if w.cfg.train.output_vocabulary == "full":
        return None
    counts = token_counts(rows, len(w.vocab))
    return OutputVocabulary.of_counts(counts if combine is None else combine(counts), special_ids(w.vocab))


def masked_batch(rows, rng: np.random.Generator, w: PretrainWorker) -> tuple:
    """:func:`~albert_ray.pretrain.masking.make_batch`, its labels indices into the model's output vocabulary."""
    ids, seg, pos, labels, weights, order_labels, order_weights = make_batch(rows, rng, w.vocab, w.cfg.train)
    if w.output is not None:
        labels = w.output.targets(labels, weights)
    return ids, seg, pos, labels, weights, order_labels, order_weights


class Budget:
    """The step cap and the wall-clock budget. Steps are timed from the 10th step the run takes
    (after tracing and warm-up; a resumed run counts from its first step); every 50 steps after
    that the schedule's total (a ``tf.Variable``) is re-fitted to the steps that still fit (and the
    warmup to its share of them), so the learning rate reaches 0 when the time is up."""

    def __init__(
        self, cap: int, minutes: float, total_var, warmup_var=None, warmup_ratio: float = 0.0, clock=time.time
    ):
        self.cap, self.minutes, self.total_var = cap, minutes, total_var
        self.warmup_var, self.warmup_ratio, self.clock = warmup_var, warmup_ratio, clock
        self.began, self.hit = clock(), False
        self.first: int | None = None  # the step the run started at
        self.timed_from: tuple[float, int] | None = None  # (time, step) the pace is measured from

    @property
    def total(self) -> int:
        return int(self.total_var.numpy())

    def over(self, done: int) -> bool:
        """True (and ``hit``) once the steps or the minutes are used up; else re-fits the schedule."""
        now = self.clock()
        self.first = done if self.first is None else self.first
        if done >= self.total or (self.minutes and now - self.began > 60 * self.minutes):
            self.hit = True
        elif self.minutes and done == self.first + 10:
            self.timed_from = (now, done)
        elif self.minutes and self.timed_from and done % 50 == 0 and done > self.timed_from[1]:
            total = float(self._fit(done, now))
            self.total_var.assign(total)
            if self.warmup_var is not None:  # the warmup is a share of the steps that fit, too
                self.warmup_var.assign(self.warmup_ratio * total)
        return self.hit

    def _fit(self, done: int, now: float) -> int:
        """The steps that fit in the budget at the pace since :attr:`timed_from` (at most the cap)."""
        per_step = max((now - self.timed_from[0]) / (done - self.timed_from[1]), 1e-9)
        return max(done + 1, min(self.cap, done + int((60 * self.minutes - (now - self.began)) / per_step)))

    def progress(self, done: int) -> str:
        """The log line's account of the budget: steps done of the cap, or under a wall-clock budget
        of the steps that fit (``~``, once the pace is measured), and the minutes used."""
        if not self.minutes:
            return f"step {done:,} of {self.total:,}"
        now = self.clock()
        fit = f" of ~{self._fit(done, now):,}" if self.timed_from and done > self.timed_from[1] else ""
        return f"step {done:,}{fit}, {(now - self.began) / 60:.1f} of {self.minutes:g} min"


def _build_pretraining(w: PretrainWorker, strategy, cap: int):
    """The MLM model (initialised, or from ``model.checkpoint``), AdamW with warmup and a decay
    that follows the :class:`Budget`, and the compiled step ``(ids, positions, labels, weights) -> loss``."""
    import tensorflow as tf

    from albert_ray.model import fused
    from albert_ray.model.checkpoint import load_checkpoint
    from albert_ray.model.encoder import dtype_policy, initialize_encoder
    from albert_ray.runtime.optimizer import WarmupLinearDecay, adamw

    t, checkpoint = w.cfg.train, w.cfg.model.checkpoint
    with strategy.scope():
        with dtype_policy(w.policy):
            model = build_mlm_model(w.encoder, t.sentence_order, w.output)
        fused.enable(model)  # packed sequences: one batch shape, compiled once
        std = init_std(w.encoder, w.cfg.model.init_range)
        initialize_encoder(model, replace(w.encoder, initializer_range=std), seed=t.seed)
        if checkpoint:
            load_checkpoint(model, w.encoder, checkpoint)
            log.info(
                "MLM head %s",
                "continued from the checkpoint"
                if load_head(model, checkpoint)
                else "new (the checkpoint has none)",
            )
        else:
            log.info("random start: weights drawn with std %g", std)
        total_var = tf.Variable(float(cap), trainable=False, dtype=tf.float32)
        warmup_var = tf.Variable(float(int(cap * t.warmup_ratio)), trainable=False, dtype=tf.float32)
        optimizer = adamw(
            model,
            WarmupLinearDecay(t.learning_rate, warmup_var, total_var),
            t.weight_decay,
            ("gamma", "beta", "bias", "embeddings"),
            w.policy,
        )
    scaled = w.policy == "mixed_float16"

    def replica_step(ids, seg, pos, labels, weights, order_labels, order_weights):
        reduce = tf.distribute.get_replica_context().all_reduce
        with tf.GradientTape() as tape:
            out = model([ids, seg, pos], training=True)
            loss_sum, _, n = masked_loss(out[0] if t.sentence_order else out, labels, weights)
            loss = loss_sum / tf.maximum(reduce("sum", n), 1.0)
            if t.sentence_order:
                order_sum, _, m = order_loss(out[1], order_labels, order_weights)
                loss += order_sum / tf.maximum(reduce("sum", m), 1.0)
        grads = tape.gradient(optimizer.get_scaled_loss(loss) if scaled else loss, model.trainable_variables)
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    sig = [tf.TensorSpec([None, None], tf.int32)] * 4 + [
        tf.TensorSpec([None, None], tf.float32),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None], tf.float32),
    ]

    @tf.function(input_signature=sig, jit_compile=t.xla or None)
    def step(*batch):
        return strategy.reduce("sum", strategy.run(replica_step, args=batch), axis=None)

    return model, optimizer, step, Budget(cap, t.max_minutes, total_var, warmup_var, t.warmup_ratio)


def _restore_pretraining(model, optimizer, w: PretrainWorker, resume):
    """The loop state; weights, MLM head and optimizer slots from a Ray Train checkpoint."""

    from albert_ray.model.checkpoint import load_checkpoint

    if resume is None:
        return TrainState()
    with resume.as_directory() as d:
        load_checkpoint(model, w.encoder, d)
        load_head(model, d)
        state = loop.restore_resume_state(d, optimizer)
    step = int(optimizer.iterations.numpy())
    state.resumes.append({"epoch": state.epoch + 1, "batch": state.batch, "step": step})
    log.info("resumed pre-training at epoch %d, batch %d (step %d)", state.epoch + 1, state.batch, step)
    return state


def _pretrain_epoch(
    step,
    optimizer,
    rows,
    w: PretrainWorker,
    *,
    rank: int,
    epoch: int,
    first: int,
    steps: int,
    budget: Budget,
    midway: Callable[[int], None],
) -> dict:
    """Batches ``first..steps-1`` of an epoch of dynamically masked batches (the order a function
    of seed, epoch and rank; a resumed epoch skips the batches done and draws new masks), calling
    ``midway(batch)`` every ``train.checkpoint_every_steps`` optimizer steps."""
    import tensorflow as tf

    t = w.cfg.train
    rng = np.random.default_rng([t.seed, epoch, rank, first])
    order = np.random.default_rng([t.seed, epoch, rank]).permutation(len(rows))
    losses, seqs, began = [], 0, time.time()
    opening = (0, 0.0)  # the first step's sequences and seconds (tracing / XLA compile included)
    bar = StepBar(
        w.progress_bar and rank == 0, steps - first, f"epoch {epoch + 1}/{t.epochs}", w.rows is None
    )
    for i in range(first, steps):
        if budget.over(int(optimizer.iterations.numpy())):
            break
        batch = masked_batch([rows[j] for j in order[i * t.batch_size : (i + 1) * t.batch_size]], rng, w)
        losses.append(float(step(*(tf.constant(x) for x in batch))))
        bar.step(losses[-1])
        if (
            len(losses) == 1
        ):  # sequences/s from the end of the first step on: not the tracing (and XLA) compile
            opening, began = (len(batch[0]), time.time() - began), time.time()
        else:
            seqs += len(batch[0])
        if rank == 0 and t.log_every and (i + 1) % t.log_every == 0 and bar.bar is None:
            log.info(
                "epoch %d step %d/%d: MLM loss %.4f (%.1f sequences/s per worker; %s)",
                epoch + 1,
                i + 1,
                steps,
                np.mean(losses[-t.log_every :]),
                seqs / (time.time() - began),
                budget.progress(int(optimizer.iterations.numpy())),
            )
        every = t.checkpoint_every_steps
        if every and i + 1 < steps and int(optimizer.iterations.numpy()) % every == 0 and not budget.hit:
            midway(i + 1)
    bar.close()
    return {
        "epoch": epoch + 1,
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "steps": int(optimizer.iterations.numpy()),
        "sequences_per_second": _rate(seqs, time.time() - began, opening),
    }


def _rate(seqs: int, seconds: float, opening: tuple[int, float]) -> float:
    """Sequences/s after the first step; an epoch of one step (a budget ending right after it) has
    only that step to report, compile time included."""
    n, t = (seqs, seconds) if seqs else opening
    return n / max(t, 1e-9)


def evaluate_mlm(model, rows, w: PretrainWorker, combine=None) -> dict:
    """MLM loss and masked-token accuracy (and sentence-order accuracy) on held-out sequences
    (fixed masking and order). ``combine`` sums the workers' totals (each evaluates its own
    held-out rows), so the numbers are the whole held-out slice's whatever the workers."""
    t = w.cfg.train
    rng = np.random.default_rng([t.seed, 999])
    sums = np.zeros(6)  # loss, correct, count; order correct, order count; sequences
    for i in range(0, len(rows), 64):
        ids, seg, pos, labels, weights, order_labels, order_weights = masked_batch(rows[i : i + 64], rng, w)
        out = model([ids, seg, pos], training=False)
        mlm = masked_loss(out[0] if t.sentence_order else out, labels, weights)
        order = order_loss(out[1], order_labels, order_weights)[1:] if t.sentence_order else (0.0, 0.0)
        sums[:5] += [float(x) for x in (*mlm, *order)]
    sums[5] = len(rows)
    if combine is not None:
        sums = combine(sums)
    result = {
        "heldout_loss": _ratio(sums[0], sums[2]),
        "heldout_accuracy": _ratio(sums[1], sums[2]),
        "heldout_sequences": int(sums[5]),
    }
    if t.sentence_order:
        result["heldout_order_accuracy"] = _ratio(sums[3], sums[4])
    return result


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")
