"""Masked-LM pre-training (and domain adaptation) of any encoder layout with Ray Train.

keras-bert does not pre-train (its issue #219) and nothing maintained does it for these
layouts, hence this module: the corpus is read by the labeling read path (any format, path, glob
or URI; bad rows skipped and counted), tokenized and packed into ``[CLS] ... [SEP]`` sequences
of ``max_len`` in Ray Data tasks; workers mask dynamically per epoch (15 %, 80/10/10), compute
logits at the masked positions only (the 21,128-word output layer would otherwise dominate),
and write the encoder in its own published checkpoint layout with the MLM head beside it
(``cls/predictions/...``), its config JSON and ``vocab.txt`` — a directory that fine-tuning takes
with ``model.init: checkpoint`` and ``model.checkpoint: <dir>`` alone. Packing and masking live
in :mod:`albert_ray.pretrain.masking`, the model, its heads and losses in :mod:`albert_ray.pretrain.mlm`, the
corpus read and its count in :mod:`albert_ray.pretrain.corpus`, the job's configuration in
:mod:`albert_ray.pretrain.config`; this module owns the model files' resolution, the worker loop
and the driver.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from albert_ray import modeldir, paths
from albert_ray.finetune.worker import (
    Context,
    LocalReporter,
    RayReporter,
    TrainState,
    WarmupLinearDecay,
    min_across_workers,
    optimizer_state,
    sums_across_workers,
)
from albert_ray.io.corpus import expand_inputs
from albert_ray.model.encoder_config import EncoderConfig, check_fits, checkpoint_folder_files
from albert_ray.model.tokenization import Vocab
from albert_ray.pretrain.config import PretrainConfig
from albert_ray.pretrain.corpus import (
    READ_TASK_CPUS,
    CorpusCount,
    CorpusTally,
    corpus_sequences,
    corpus_texts,
    peek_tally,
    require_a_step_per_share,
    require_enough_text,
    sequences_dataset,
    too_small,
)
from albert_ray.pretrain.masking import is_heldout, make_batch, special_ids, token_counts
from albert_ray.pretrain.mlm import (
    OutputVocabulary,
    build_mlm_model,
    load_head,
    masked_loss,
    order_loss,
    save_pretrained,
)
from albert_ray.runtime.attach import (
    configure_tf,
    every_row_split,
    init_ray,
    require_read_room,
    require_shared_storage,
    require_visible,
    require_visible_folder,
    trainer_class,
)
from albert_ray.runtime.progress import StepBar, bars_wanted

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
    return init_range if init_range is not None else max(encoder.initializer_range, encoder.hidden_size ** -0.5)


def resolve_model_files(cfg: PretrainConfig) -> tuple[EncoderConfig, Vocab]:
    """The encoder config and vocabulary: given, else the checkpoint directory's own."""
    m = cfg.model
    own_config, own_vocab = checkpoint_folder_files(m.checkpoint) if m.checkpoint else (None, None)
    config_file = m.encoder_config or own_config or "data/albert_config_sample.json"
    vocab_file = m.vocab or own_vocab
    if vocab_file is None:
        raise ValueError("model.vocab: give a vocab.txt (the brightmart one), 'auto' (the corpus' characters) or a "
                         "model.checkpoint directory that holds one")
    encoder = EncoderConfig.from_json_file(config_file)
    if vocab_file == "auto":
        if m.checkpoint:
            raise ValueError("model.vocab: a checkpoint needs its own vocab.txt, not 'auto'")
        from dataclasses import replace

        from albert_ray.model.tokenization import build_char_vocab

        vocab = build_char_vocab(corpus_texts(cfg))
        log.info("vocab: auto -> %d characters from the corpus (vocab_size of %s overridden)", len(vocab), config_file)
        encoder = replace(encoder, vocab_size=len(vocab))
    else:
        vocab = Vocab.from_file(vocab_file)
    check_fits(encoder, m.max_len, len(vocab), vocab_file)
    return encoder, vocab


# ---- the worker loop -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainWorker:
    cfg: PretrainConfig
    encoder: EncoderConfig
    vocab: Vocab
    tf_threads: int = 0
    rows: list | None = None          # in-process runs: the sequences
    local_output: str | None = None
    progress_bar: bool = False        # the driver writes to a terminal: a step bar on rank 0
    output: OutputVocabulary | None = None  # the MLM softmax's ids (train.output_vocabulary=corpus): set by the loop


def pretrain_loop_per_worker(config: dict) -> None:
    """Ray Train worker (also in-process): build, restore, train epochs within the budget, report."""
    from tensorflow import keras


    w: PretrainWorker = config["worker"]
    configure_tf(w.tf_threads)
    cfg, t = w.cfg, w.cfg.train
    ctx = _pretrain_context(w)
    heldout = [r for r in ctx.rows if is_heldout(r, t.heldout_permille)]
    train_rows = [r for r in ctx.rows if not is_heldout(r, t.heldout_permille)]
    keras.utils.set_random_seed(t.seed)

    # the workers' totals (collectives: every worker asks): held-out metrics, the header
    combine = None if ctx.world == 1 else lambda values: sums_across_workers(ctx.strategy, values)
    sequences, held_out = (int(n) for n in (combine or np.asarray)([len(ctx.rows), len(heldout)]))
    steps_per_epoch = len(train_rows) // t.batch_size
    if ctx.world > 1:  # every worker must run the same number of steps: the smallest shard decides
        steps_per_epoch = min_across_workers(ctx.strategy, steps_per_epoch)
    if steps_per_epoch == 0:  # in this process; through Ray, require_enough_text refused it first
        raise too_small(cfg, len(train_rows) * ctx.world, ctx.world)
    w = replace(w, output=_output_vocabulary(ctx.rows, w, combine))
    if not held_out and ctx.rank == 0:
        log.warning("no held-out sequence among %d (train.heldout_permille=%d): held-out loss and accuracy will read "
                    "nan; raise train.heldout_permille", sequences, t.heldout_permille)
    cap = max(1, steps_per_epoch * t.epochs)
    cap = min(cap, t.max_steps) if t.max_steps else cap
    model, optimizer, step, budget = _build_pretraining(w, ctx.strategy, cap)
    state = _restore_pretraining(model, optimizer, w, ctx.resume)
    if ctx.rank == 0:
        log.info("pre-training %s: %d sequences (%d held out), %d workers x batch %d, %d steps/epoch, at most %d steps"
                 "%s, %s, MLM softmax over %s", cfg.name, sequences, held_out, ctx.world, t.batch_size, steps_per_epoch,
                 cap, f", {t.max_minutes:g} min" if t.max_minutes else "", t.precision,
                 f"all {len(w.vocab):,} vocabulary ids" if w.output is None else
                 f"the {len(w.output.ids):,} of {len(w.vocab):,} vocabulary ids the corpus holds")

    def checkpoint(folder):

        save_pretrained(folder, model, w.encoder, w.vocab, {"history": state.history, "resumes": state.resumes})
        Path(folder, "train_state.json").write_text(state.to_json())
        np.savez(Path(folder, "optimizer.npz"), **{f"v{i}": v.numpy() for i, v in enumerate(optimizer_state(optimizer))})

    def midway(epoch: int, batch: int) -> None:  # a checkpoint within the epoch, resumed at ``batch``
        state.epoch, state.batch = epoch, batch
        ctx.reporter.report({"epoch": epoch + 1, "steps": int(optimizer.iterations.numpy()), "final": False}, checkpoint)

    for epoch in range(state.epoch, t.epochs):
        first = state.batch if epoch == state.epoch else 0
        metrics = _pretrain_epoch(step, optimizer, train_rows, w, ctx.rank, epoch, (first, steps_per_epoch), budget,
                                  lambda batch: midway(epoch, batch))
        metrics.update(evaluate_mlm(model, heldout, w, combine), sequences=sequences)
        state.history.append(metrics)
        state.epoch, state.batch = epoch + 1, 0
        if ctx.rank == 0:
            order = metrics.get("heldout_order_accuracy")
            log.info("epoch %d: loss %.4f, held-out MLM loss %.4f, masked-token accuracy %.4f%s, %.1f sequences/s",
                     epoch + 1, metrics["train_loss"], metrics["heldout_loss"], metrics["heldout_accuracy"],
                     "" if order is None else f", sentence-order accuracy {order:.4f}", metrics["sequences_per_second"])
        ctx.reporter.report({**metrics, "final": budget.hit or epoch + 1 == t.epochs}, checkpoint)
        if budget.hit:
            break


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

    def __init__(self, cap: int, minutes: float, total_var, warmup_var=None, warmup_ratio: float = 0.0,
                 clock=time.time):
        self.cap, self.minutes, self.total_var = cap, minutes, total_var
        self.warmup_var, self.warmup_ratio, self.clock = warmup_var, warmup_ratio, clock
        self.began, self.hit = clock(), False
        self.first: int | None = None                   # the step the run started at
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


def _pretrain_context(w: PretrainWorker):
    """Rank, rows, strategy, resume checkpoint and reporter: Ray Train's, or this process's."""
    import tensorflow as tf


    if w.rows is not None:
        return Context(0, 1, [np.asarray(r, np.int32) for r in w.rows], tf.distribute.get_strategy(), None,
                       LocalReporter(w.local_output))
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    rows = [np.asarray(r["token_ids"], np.int32) for r in ray.train.get_dataset_shard("train").iter_rows()]
    rows.sort(key=lambda r: r.tobytes())  # Ray Data's order varies between attempts; a resumed epoch skips by position
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if world > 1 else tf.distribute.get_strategy()
    return Context(rank, world, rows, strategy, ray.train.get_checkpoint(), RayReporter(rank))


def _build_pretraining(w: PretrainWorker, strategy, cap: int):
    """The MLM model (initialised, or from ``model.checkpoint``), AdamW with warmup and a decay
    that follows the :class:`Budget`, and the compiled step ``(ids, positions, labels, weights) -> loss``."""
    import tensorflow as tf
    from tensorflow import keras

    from albert_ray.model import fused
    from albert_ray.model.encoder import dtype_policy, initialize_encoder

    t, checkpoint = w.cfg.train, w.cfg.model.checkpoint
    with strategy.scope():
        with dtype_policy(t.precision):
            model = build_mlm_model(w.encoder, t.sentence_order, w.output)
        fused.enable(model)  # packed sequences: one batch shape, compiled once
        std = init_std(w.encoder, w.cfg.model.init_range)
        initialize_encoder(model, replace(w.encoder, initializer_range=std), seed=t.seed)
        if checkpoint:
            from albert_ray.model.checkpoint import load_checkpoint

            load_checkpoint(model, w.encoder, checkpoint)
            log.info("MLM head %s", "continued from the checkpoint" if load_head(model, checkpoint)
                     else "new (the checkpoint has none)")
        else:
            log.info("random start: weights drawn with std %g", std)
        total_var = tf.Variable(float(cap), trainable=False, dtype=tf.float32)
        warmup_var = tf.Variable(float(int(cap * t.warmup_ratio)), trainable=False, dtype=tf.float32)
        schedule = WarmupLinearDecay(t.learning_rate, warmup_var, total_var)
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=t.weight_decay, epsilon=1e-6)
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias", "embeddings"])
        if t.precision == "mixed_float16":
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    scaled = t.precision == "mixed_float16"

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

    sig = [tf.TensorSpec([None, None], tf.int32)] * 4 + [tf.TensorSpec([None, None], tf.float32),
                                                         tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.float32)]

    @tf.function(input_signature=sig, jit_compile=t.xla or None)
    def step(*batch):
        return strategy.reduce("sum", strategy.run(replica_step, args=batch), axis=None)

    return model, optimizer, step, Budget(cap, t.max_minutes, total_var, warmup_var, t.warmup_ratio)


def _restore_pretraining(model, optimizer, w: PretrainWorker, resume):
    """The loop state; weights, MLM head and optimizer slots from a Ray Train checkpoint."""

    if resume is None:
        return TrainState()
    with resume.as_directory() as d:
        from albert_ray.model.checkpoint import load_checkpoint

        load_checkpoint(model, w.encoder, d)
        load_head(model, d)
        state = TrainState.load(d)
        saved = np.load(Path(d) / "optimizer.npz")
        for i, var in enumerate(optimizer_state(optimizer)):
            var.assign(saved[f"v{i}"])
    step = int(optimizer.iterations.numpy())
    state.resumes.append({"epoch": state.epoch + 1, "batch": state.batch, "step": step})
    log.info("resumed pre-training at epoch %d, batch %d (step %d)", state.epoch + 1, state.batch, step)
    return state


def _pretrain_epoch(step, optimizer, rows, w: PretrainWorker, rank: int, epoch: int, batches: tuple[int, int],
                    budget: Budget, midway) -> dict:
    """Batches ``first..steps-1`` of an epoch of dynamically masked batches (the order a function
    of seed, epoch and rank; a resumed epoch skips the batches done and draws new masks), calling
    ``midway(batch)`` every ``train.checkpoint_every_steps`` optimizer steps."""
    import tensorflow as tf

    t = w.cfg.train
    first, steps = batches
    rng = np.random.default_rng([t.seed, epoch, rank, first])
    order = np.random.default_rng([t.seed, epoch, rank]).permutation(len(rows))
    losses, seqs, began = [], 0, time.time()
    opening = (0, 0.0)  # the first step's sequences and seconds (tracing / XLA compile included)
    bar = StepBar(w.progress_bar and rank == 0, steps - first, f"epoch {epoch + 1}/{t.epochs}", w.rows is None)
    for i in range(first, steps):
        if budget.over(int(optimizer.iterations.numpy())):
            break
        batch = masked_batch([rows[j] for j in order[i * t.batch_size : (i + 1) * t.batch_size]], rng, w)
        losses.append(float(step(*(tf.constant(x) for x in batch))))
        bar.step(losses[-1])
        if len(losses) == 1:  # sequences/s from the end of the first step on: not the tracing (and XLA) compile
            opening, began = (len(batch[0]), time.time() - began), time.time()
        else:
            seqs += len(batch[0])
        if rank == 0 and t.log_every and (i + 1) % t.log_every == 0 and bar.bar is None:
            log.info("epoch %d step %d/%d: MLM loss %.4f (%.1f sequences/s per worker; %s)", epoch + 1, i + 1, steps,
                     np.mean(losses[-t.log_every:]), seqs / (time.time() - began),
                     budget.progress(int(optimizer.iterations.numpy())))
        every = t.checkpoint_every_steps
        if every and i + 1 < steps and int(optimizer.iterations.numpy()) % every == 0 and not budget.hit:
            midway(i + 1)
    bar.close()
    return {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "steps": int(optimizer.iterations.numpy()), "sequences_per_second": _rate(seqs, time.time() - began, opening)}


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
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    result = {"heldout_loss": ratio(sums[0], sums[2]), "heldout_accuracy": ratio(sums[1], sums[2]),
              "heldout_sequences": int(sums[5])}
    if t.sentence_order:
        result["heldout_order_accuracy"] = ratio(sums[3], sums[4])
    return result


# ---- driver ----------------------------------------------------------------------------------------
def pretrain(cfg: PretrainConfig, in_process: bool = False) -> dict:
    """Pre-train; write ``<output_dir>/<name>/pretrained/``; return its summary."""
    began = time.time()
    encoder, vocab = resolve_model_files(cfg)
    if cfg.model.checkpoint:
        from albert_ray.model.checkpoint import check_checkpoint

        check_checkpoint(encoder, cfg.model.checkpoint)
    remote = paths.is_uri(cfg.pretrained_dir)
    out = Path(tempfile.mkdtemp(prefix="albert-ray-pretrained-")) / "pretrained" if remote else Path(cfg.pretrained_dir)
    count = (_pretrain_here if in_process else _pretrain_on_ray)(cfg, encoder, vocab, out)
    (out / modeldir.OPTIMIZER_FILE).unlink(missing_ok=True)
    summary = json.loads((out / "pretrain.json").read_text())
    summary.update(name=cfg.name, pretrained_dir=paths.without_credentials(cfg.pretrained_dir), seconds=round(time.time() - began, 1),
                   precision=cfg.train.precision, corpus=asdict(count))
    summary = paths.scrub(summary)
    (out / "pretrain.json").write_text(json.dumps(summary, indent=2))
    if remote:
        paths.publish_dir(out, cfg.pretrained_dir)
        shutil.rmtree(out.parent, ignore_errors=True)
    return summary


def _pretrain_here(cfg: PretrainConfig, encoder: EncoderConfig, vocab: Vocab, out: Path) -> CorpusCount:
    """The worker loop in this process, on a corpus read here (no Ray): for tests and debugging."""
    t = cfg.train
    rows, count = corpus_sequences(cfg, vocab)
    log.info("corpus: %s", count.describe())
    if (training := sum(not is_heldout(r, t.heldout_permille) for r in rows)) < t.batch_size:
        raise too_small(cfg, training, 1, count)
    pretrain_loop_per_worker({"worker": PretrainWorker(cfg, encoder, vocab, t.tf_threads, rows, str(out),
                                                       bars_wanted())})
    return count


def _pretrain_on_ray(cfg: PretrainConfig, encoder: EncoderConfig, vocab: Vocab, out: Path) -> CorpusCount:
    """Ray Train workers fed by Ray Data read tasks; the corpus count comes from a tally actor."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig


    t = cfg.train
    require_enough_text(cfg, vocab)
    init_ray(cfg.ray_address)
    require_shared_storage(cfg.storage_path, "storage_path")
    require_visible("input", "read tasks open it", [(f.path, f.size) for f in expand_inputs(cfg.inputs, cfg.format)
                                                    if not paths.is_uri(f.path)])
    require_visible_folder("storage_path" if cfg.storage_path else "output_dir", "Ray Train's workers write "
                           "checkpoints under it", cfg.ray_storage)
    require_read_room(t.num_workers, t.cpus_per_worker, READ_TASK_CPUS, "the corpus")
    tally = ray.remote(num_cpus=0)(CorpusTally).remote()
    try:
        sequences = sequences_dataset(cfg, vocab, tally)
        split = every_row_split(sequences, t.num_workers, f"{cfg.name}: packed corpus",
                                lambda shares: require_a_step_per_share(cfg, shares, peek_tally(tally)))
        threads = t.tf_threads or max(1, (os.cpu_count() or 1) // t.num_workers)
        trainer = trainer_class()(
            pretrain_loop_per_worker,
            train_loop_config={"worker": PretrainWorker(cfg, encoder, vocab, threads, progress_bar=bars_wanted())},
            scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                         resources_per_worker={"CPU": t.cpus_per_worker}),
            datasets={"train": sequences}, dataset_config=split,
            run_config=RunConfig(name=f"{cfg.name}-pretrain", storage_path=cfg.ray_storage,
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 failure_config=FailureConfig(max_failures=t.max_failures)))
        result = trainer.fit()
        count = peek_tally(tally)
    finally:
        if ray.is_initialized():  # not after Ctrl-C: attach.trainer_class shuts Ray down then
            ray.kill(tally)
    log.info("corpus: %s", count.describe())
    if result.checkpoint is None:
        raise RuntimeError(f"pre-training run {cfg.name} ended without a checkpoint; see the log above")
    if out.exists():
        shutil.rmtree(out)
    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, out)
    return count
