"""Fine-tuning: data preparation on the driver, ``train_loop_per_worker`` under Ray Train's
``TensorflowTrainer`` (``MultiWorkerMirroredStrategy``), evaluation of the best model.

One code path for one worker or many: the loop reads its rows from ``get_dataset_shard``,
builds and compiles under ``strategy.scope()``, and reports metrics and checkpoints to Ray.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import shutil
import tempfile
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from albert_ray.config import EncoderConfig
from albert_ray.data import Example, read_examples
from albert_ray.jobconfig import JobConfig
from albert_ray.runtime import init_ray, require_shared_storage
from albert_ray.spec import ModelSpec
from albert_ray.tasks import task_for
from albert_ray.tokenization import CLS, MASK, PAD, SEP, UNK, CharTokenizer, Vocab

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"


# ---- driver-side preparation ------------------------------------------------------------
@dataclass
class Prepared:
    spec: ModelSpec
    vocab: Vocab
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    skipped: dict[str, int]
    train_count: int = 0


def build_char_vocab(texts: Sequence[str]) -> Vocab:
    """A character vocabulary for training from scratch (``model.vocab: auto``): the special
    tokens, then every normalised character of the texts by frequency."""
    counts: Counter[str] = Counter()
    for text in texts:
        for ch in text:
            if ch.isspace():
                continue
            norm = unicodedata.normalize("NFKC", ch).lower()
            counts[norm if len(norm) == 1 else ch.lower()] += 1
    chars = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c not in (PAD, UNK, CLS, SEP, MASK)]
    return Vocab([PAD, UNK, CLS, SEP, MASK] + chars)


def prepare(job: JobConfig) -> Prepared:
    """Read the splits, derive label and token vocabularies, and describe the model."""
    task = task_for(job.task)
    read = dict(fmt=job.data.format, multilabel=job.task == "multilabel", scheme=job.model.scheme,
                on_bad_records=job.data.on_bad_records)
    skipped = {}
    train_res = read_examples(job.data.train, **read)
    train, skipped["train"] = train_res.examples, len(train_res.skipped)
    if job.data.dev:
        dev_res = read_examples(job.data.dev, **read)
        dev, skipped["dev"] = dev_res.examples, len(dev_res.skipped)
    else:
        rng = random.Random(job.train.seed)
        shuffled = train[:]
        rng.shuffle(shuffled)
        n_dev = max(1, int(len(shuffled) * job.data.dev_fraction))
        dev, train = shuffled[:n_dev], shuffled[n_dev:]
        log.info("no dev file: using %d of the training examples as dev", n_dev)
    test: list[Example] = []
    if job.data.test:
        test_res = read_examples(job.data.test, **read)
        test, skipped["test"] = test_res.examples, len(test_res.skipped)
    if job.data.max_train_examples:
        train = train[: job.data.max_train_examples]
    if job.data.max_eval_examples:
        dev, test = dev[: job.data.max_eval_examples], test[: job.data.max_eval_examples]
    if not train:
        raise ValueError(f"{job.data.train}: no training examples")

    if job.model.vocab == "auto":
        vocab = build_char_vocab([e.text for e in train])
    else:
        vocab = Vocab.from_file(job.model.vocab)
    encoder = EncoderConfig.from_json_file(job.model.encoder_config)
    if job.model.vocab == "auto" and encoder.vocab_size != len(vocab):
        log.info("vocab: auto -> %d characters from the training data (vocab_size of %s overridden)",
                 len(vocab), job.model.encoder_config)
        encoder = replace(encoder, vocab_size=len(vocab))
    elif encoder.vocab_size != len(vocab):
        raise ValueError(f"{job.model.vocab} has {len(vocab)} tokens but {job.model.encoder_config} says "
                         f"vocab_size={encoder.vocab_size}; use the vocab.txt that came with the checkpoint")
    if job.model.max_len > encoder.max_position_embeddings:
        raise ValueError(f"model.max_len={job.model.max_len} exceeds max_position_embeddings="
                         f"{encoder.max_position_embeddings} of {job.model.encoder_config}")
    labels = task.label_vocab(train)
    spec = ModelSpec(
        task=job.task, labels=labels, encoder={**encoder.to_dict(), "layout": encoder.layout},
        max_len=job.model.max_len, stride=job.model.stride, truncation=job.model.truncation,
        scheme=job.model.scheme, bilstm_units=job.model.bilstm_units, dropout=job.model.dropout,
        pooling=job.model.pooling, name=job.name,
    )
    return Prepared(spec=spec, vocab=vocab, train=train, dev=dev, test=test, skipped=skipped, train_count=len(train))


def featurize(spec: ModelSpec, vocab: Vocab, examples: Sequence[Example]) -> list[dict]:
    """Training rows ``{"token_ids": [...], "target": ...}``; long NER texts give several windows."""
    task, tokenizer = task_for(spec), CharTokenizer(vocab)
    rows = []
    for example in examples:
        for ids, target in task.training_windows(tokenizer, example, spec):
            rows.append({"token_ids": list(ids), "target": np.asarray(target).tolist()})
    return rows


def _featurize_batch(batch: dict, spec: ModelSpec, vocab: Vocab) -> dict:
    """Ray Data ``map_batches`` UDF: serialised examples in, training rows out (NER: one per window)."""
    examples = []
    for raw in batch["example"]:
        d = json.loads(raw)
        examples.append(Example(text=d["text"], source=d["source"], label=d["label"],
                                labels=tuple(d["labels"]) if d["labels"] is not None else None,
                                spans=tuple(tuple(x) for x in d["spans"]) if d["spans"] is not None else None))
    rows = featurize(spec, vocab, examples)
    return {"token_ids": [r["token_ids"] for r in rows], "target": [r["target"] for r in rows]}


_CHUNK = 5000  # examples per Arrow block handed from the reading task to Ray Data


def _serialise(examples: Sequence[Example]) -> list[str]:
    return [json.dumps({"text": e.text, "source": e.source, "label": e.label, "labels": e.labels, "spans": e.spans},
                       ensure_ascii=False) for e in examples]


def _prepare_in_task(job: JobConfig):
    """Ray task (a streaming generator): read the splits away from the driver. Yields the
    ``Prepared`` description without the training examples, then the training examples as Arrow
    tables; the caller owns every yielded object, so they outlive this task."""
    import pyarrow as pa

    prep = prepare(job)
    train = prep.train
    prep.train = []
    prep.train_count = len(train)
    yield prep
    for i in range(0, len(train), _CHUNK):
        yield pa.table({"example": _serialise(train[i : i + _CHUNK])})


def prepare_distributed(job: JobConfig):
    """:func:`prepare` in a Ray task; returns ``(prepared without train examples, dataset of
    training rows)``. The driver holds only the dev / test examples, the vocabularies and object
    references; featurisation runs in Ray Data tasks."""
    import ray

    task = ray.remote(num_cpus=0.5, num_returns="streaming")(_prepare_in_task)
    gen = task.remote(job)
    prep = ray.get(next(gen))
    refs = list(gen)
    ds = ray.data.from_arrow_refs(refs).map_batches(
        _featurize_batch, fn_kwargs={"spec": prep.spec, "vocab": prep.vocab}, batch_size=256, num_cpus=0.5)
    return prep, ds


def make_batches(rows: Sequence[dict], batch_size: int, seed: int, epoch: int, pad_targets,
                 bucket: int = 50, unpadded: bool = False, pad_to: int | None = None) -> list[tuple]:
    """Shuffled, length-bucketed, per-batch padded batches for one epoch.

    Rows are shuffled, cut into pools of ``bucket`` batches, sorted by length inside each pool
    and batched, and the batch order is shuffled: little padding, still random.  ``bucket=0``
    with ``pad_to`` gives the reference's fixed padding instead.
    """
    from albert_ray.predict import pad_batch

    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(rows))
    pool = batch_size * max(bucket, 1)
    batches: list[tuple] = []
    for p in range(0, len(order), pool):
        chunk = sorted(order[p : p + pool], key=lambda i: len(rows[i]["token_ids"])) if bucket else order[p : p + pool]
        for b in range(0, len(chunk), batch_size):
            idx = chunk[b : b + batch_size]
            ids = [rows[i]["token_ids"] for i in idx]
            targets = [rows[i]["target"] for i in idx]
            if pad_to and not unpadded:  # fixed padding: ids to pad_to, sequence targets too
                ids = [list(x) + [0] * (pad_to - len(x)) for x in ids]
                targets = [list(y) + [-1] * (pad_to - len(y)) if isinstance(y, list) and len(y) == len(x) else y
                           for y, x in zip(targets, [rows[i]["token_ids"] for i in idx])]
            batches.append((ids if unpadded else pad_batch(ids), pad_targets(targets)))
    shuffled = rng.permutation(len(batches))
    return [batches[i] for i in shuffled]


def learning_rate(job: JobConfig) -> float:
    """Peak learning rate for the global batch (explicit policy: ``train.lr_scaling``)."""
    t = job.train
    if t.lr_scaling == "linear":
        return t.learning_rate * t.batch_size * t.num_workers * t.grad_accum_steps / t.lr_reference_batch
    return t.learning_rate


# ---- the worker loop ---------------------------------------------------------------------
def _configure_tf(threads: int) -> None:
    import tensorflow as tf

    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        except RuntimeError:  # already initialised in this process
            pass
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


def _rows_from_shard(shard) -> list[dict]:
    rows = []
    for row in shard.iter_rows():
        rows.append({"token_ids": np.asarray(row["token_ids"]).tolist(), "target": np.asarray(row["target"]).tolist()})
    return rows


class WarmupLinearDecay:
    """Linear warmup to ``peak`` over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def __new__(cls, peak: float, warmup: int, total: int):
        import tensorflow as tf
        from tensorflow import keras

        class _Schedule(keras.optimizers.schedules.LearningRateSchedule):
            def __call__(self, step):
                step = tf.cast(step, tf.float32)
                warm = peak * step / max(1, warmup)
                decay = peak * tf.maximum(0.0, (total - step) / max(1, total - warmup))
                return tf.where(step < warmup, warm, decay)

            def get_config(self):
                return {"peak": peak, "warmup": warmup, "total": total}

        return _Schedule()


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker entry point (also callable in-process with ``config["ray"] = False``).

    Data order is a function of (seed, epoch) only, so a run resumed from a checkpoint taken
    after ``k`` steps continues with exactly the batches an uninterrupted run would have seen.
    """
    import albert_ray  # noqa: F401

    _configure_tf(config["tf_threads"])
    import tensorflow as tf
    from tensorflow import keras

    from albert_ray.checkpoint import load_checkpoint
    from albert_ray.encoder import dtype_policy, initialize_encoder
    from albert_ray.predict import Labeler
    from albert_ray.tasks import build_task_model

    job: JobConfig = config["job"]
    spec: ModelSpec = config["spec"]
    vocab: Vocab = config["vocab"]
    use_ray = config.get("ray", True)
    task = task_for(spec)
    t = job.train
    if use_ray:
        import ray.train

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        rows = _rows_from_shard(ray.train.get_dataset_shard("train"))
        strategy = tf.distribute.MultiWorkerMirroredStrategy() if world > 1 else tf.distribute.get_strategy()
        resume = ray.train.get_checkpoint()
    else:
        rank, world, rows = 0, 1, config["rows"]
        strategy = tf.distribute.get_strategy()
        resume = None
    keras.utils.set_random_seed(t.seed)
    # "deterministic": every worker holds all rows and takes its slice of each global batch, so N
    # workers at batch b follow exactly the steps of 1 worker at batch N*b; "ray": each worker
    # trains on its own Ray Data shard.
    global_rows = len(rows) * (world if t.shard == "ray" else 1)
    steps_per_epoch = math.ceil(global_rows / (t.batch_size * world * t.grad_accum_steps))
    total_steps = max(1, steps_per_epoch * t.epochs)
    warmup = int(total_steps * t.warmup_ratio)
    peak = learning_rate(job)
    if rank == 0:
        log.info("run %s: task=%s, %d training rows, %d workers (%s shards), per-worker batch %d x %d accumulation, "
                 "global batch %d, %d optimizer steps/epoch, %d epochs, peak lr %.2e, warmup %d steps", job.name,
                 spec.task, global_rows, world, t.shard, t.batch_size, t.grad_accum_steps,
                 t.batch_size * world * t.grad_accum_steps, steps_per_epoch, t.epochs, peak, warmup)

    with strategy.scope():
        with dtype_policy("mixed_float16" if t.mixed_precision else "float32"):
            model = build_task_model(spec)
        encoder_config = spec.encoder_config()
        if job.model.init == "checkpoint":
            load_checkpoint(model, encoder_config, job.model.checkpoint)
        else:
            initialize_encoder(model, encoder_config, seed=t.seed)
        optimizer = keras.optimizers.AdamW(learning_rate=WarmupLinearDecay(peak, warmup, total_steps),
                                           weight_decay=t.weight_decay, epsilon=1e-6)
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias", "_b[qkvo12]", "embeddings"])
        if t.mixed_precision:
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        accumulators = [tf.Variable(tf.zeros_like(v), trainable=False) for v in model.trainable_variables] \
            if t.grad_accum_steps > 1 else []
    loss_fn = task.loss(model)

    state = {"epoch": 0, "batch": 0, "best_score": -1.0, "bad_epochs": 0, "history": [], "resumes": []}
    best_weights = None
    if resume is not None:
        with resume.as_directory() as d:
            model.load_weights(str(Path(d) / "model.weights.h5"))
            state = json.loads((Path(d) / STATE_FILE).read_text())
            opt_file = Path(d) / "optimizer.npz"
            if opt_file.exists():
                saved = np.load(opt_file)
                for i, var in enumerate(optimizer_state(optimizer)):
                    var.assign(saved[f"v{i}"])
        best_weights = model.get_weights() if state.get("is_best") else None
        state["resumes"] = state.get("resumes", []) + [{"epoch": state["epoch"], "batch": state["batch"],
                                                        "step": int(optimizer.iterations.numpy())}]
        log.info("resumed from checkpoint at epoch %d, batch %d (optimizer step %d, best dev %.4f)",
                 state["epoch"] + 1, state["batch"], int(optimizer.iterations.numpy()), state["best_score"])

    sig = [tf.TensorSpec([None, None], tf.int32), task.target_signature(spec), tf.TensorSpec([], tf.bool)]

    def step_fn(ids, y, apply):
        with tf.GradientTape() as tape:
            pred = model([ids, tf.zeros_like(ids)], training=True)
            per_example = tf.cast(loss_fn(y, pred), tf.float32)
            n = tf.cast(tf.shape(per_example)[0], tf.float32)
            total_n = tf.distribute.get_replica_context().all_reduce("sum", n)
            loss = tf.reduce_sum(per_example) / total_n
            scaled = optimizer.get_scaled_loss(loss) if t.mixed_precision else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        if t.mixed_precision:
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

    @tf.function(input_signature=sig, jit_compile=t.xla or None)
    def train_step(ids, y, apply):
        return strategy.reduce("sum", strategy.run(step_fn, args=(ids, y, apply)), axis=None)

    labeler = Labeler(model, spec, vocab, batch_size=max(32, t.batch_size))
    dev: list[Example] = config["dev"]
    last_score = state["history"][-1]["dev_score"] if state["history"] else -1.0
    for epoch in range(state["epoch"], t.epochs):
        began, losses, examples = time.time(), [], 0
        batches = _epoch_batches(rows, t, epoch, task.pad_targets, rank, world, pad_to=spec.max_len)
        # every worker must run the same number of steps (collectives): the smallest shard decides
        n_batches = _min_across_workers(strategy, len(batches)) if world > 1 and t.shard == "ray" else len(batches)
        n_batches -= n_batches % t.grad_accum_steps if n_batches >= t.grad_accum_steps else 0
        first = state["batch"] if epoch == state["epoch"] else 0
        for i in range(first, n_batches):
            ids, y = batches[i]
            apply = (i + 1) % t.grad_accum_steps == 0
            scale = float(optimizer.loss_scale) if t.mixed_precision and apply else None
            losses.append(float(train_step(tf.constant(ids), tf.constant(y), tf.constant(apply))))
            if scale is not None and float(optimizer.loss_scale) < scale:
                # dynamic loss scaling: gradients overflowed in float16, the update was skipped and
                # the scale halved (the step still counts in the learning-rate schedule)
                state["skipped_steps"] = state.get("skipped_steps", 0) + 1
            examples += len(ids)
            if rank == 0 and t.log_every and (i + 1) % t.log_every == 0:
                log.info("epoch %d batch %d/%d loss %.4f (%.1f ex/s per worker)", epoch + 1, i + 1, n_batches,
                         np.mean(losses[-t.log_every:]), examples / (time.time() - began))
            if t.checkpoint_every_steps and apply and (i + 1) < n_batches and \
                    int(optimizer.iterations.numpy()) % t.checkpoint_every_steps == 0:
                state.update(epoch=epoch, batch=i + 1, is_best=False)
                _report(use_ray, rank, {"epoch": epoch + 1, "dev_score": last_score,
                                        "steps": int(optimizer.iterations.numpy())},
                        model, optimizer, spec, vocab, job, state, config)
        train_seconds = time.time() - began
        score = -1.0
        if rank == 0 and dev:
            _, report = task.report(dev, labeler.predict([e.text for e in dev]), spec)
            score = task.dev_score(report)
        if world > 1:
            score = _broadcast_from_rank0(strategy, score)
        last_score = score
        improved = score > state["best_score"]
        if improved:
            state["best_score"], best_weights, state["bad_epochs"] = score, model.get_weights(), 0
        else:
            state["bad_epochs"] += 1
        metrics = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                   "dev_score": score, "best_dev_score": state["best_score"],
                   "examples_per_second": examples / max(train_seconds, 1e-9),
                   "steps": int(optimizer.iterations.numpy()),
                   "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        if t.mixed_precision:
            metrics.update(loss_scale=float(optimizer.loss_scale), skipped_steps=state.get("skipped_steps", 0))
        state["history"].append(metrics)
        if rank == 0:
            log.info("epoch %d/%d: loss %.4f, dev %s %.4f (best %.4f), %.1f ex/s per worker", epoch + 1, t.epochs,
                     metrics["train_loss"], task.name, score, state["best_score"], metrics["examples_per_second"])
        stop = state["bad_epochs"] > t.patience
        state.update(epoch=epoch + 1, batch=0, is_best=improved)
        _report(use_ray, rank, metrics, model, optimizer, spec, vocab, job, state, config)
        if stop:
            if rank == 0:
                log.info("early stopping: no dev improvement for %d epochs", state["bad_epochs"])
            break
    if best_weights is not None:
        model.set_weights(best_weights)
    if rank == 0 and dev:
        tuned = task.tune(spec, labeler.predict([e.text for e in dev]), dev)
        if tuned != spec:
            log.info("tuned on dev: %s", {k: v for k, v in tuned.to_dict().items() if v != spec.to_dict()[k]})
            spec = tuned
    state.update(final=True, is_best=True, steps=int(optimizer.iterations.numpy()))
    _report(use_ray, rank, {"epoch": state["epoch"], "dev_score": state["best_score"],
                            "best_dev_score": state["best_score"], "final": True, "steps": state["steps"]},
            model, optimizer, spec, vocab, job, state, config)


def _epoch_batches(rows, t, epoch, pad_targets, rank, world, pad_to=None):
    """This worker's batches for an epoch (see ``train.shard``)."""
    if t.shard == "ray" or world == 1:
        if not t.bucket_by_length:
            return make_batches(rows, t.batch_size, t.seed, epoch, pad_targets, bucket=0, pad_to=pad_to)
        return make_batches(rows, t.batch_size, t.seed, epoch, pad_targets)
    from albert_ray.predict import pad_batch

    plan = make_batches(rows, t.batch_size * world, t.seed, epoch, lambda targets: list(targets), unpadded=True)
    mine = []
    part = slice(rank * t.batch_size, (rank + 1) * t.batch_size)
    for ids_rows, targets in plan:
        if ids_rows[part]:
            mine.append((pad_batch(ids_rows[part]), pad_targets(targets[part])))
    return mine


def _min_across_workers(strategy, n: int) -> int:
    import tensorflow as tf

    value = strategy.run(lambda: tf.constant([float(n)]))
    return int(tf.reduce_min(strategy.gather(value, axis=0)).numpy())


def _broadcast_from_rank0(strategy, score: float) -> float:
    """Rank 0 evaluated dev; every worker needs the same early-stopping decision."""
    import tensorflow as tf

    value = strategy.run(lambda: tf.constant([score]))
    return float(strategy.gather(value, axis=0).numpy()[0])  # worker 0's value


def _report(use_ray, rank, metrics, model, optimizer, spec, vocab, job, state, config) -> None:
    """Report metrics; rank 0 attaches a checkpoint (model directory + optimizer + loop state)."""
    from albert_ray.predict import save_model_dir

    def write(folder):
        save_model_dir(folder, model, spec, vocab, job.to_dict())
        Path(folder, STATE_FILE).write_text(json.dumps(state, indent=2))
        np.savez(Path(folder, "optimizer.npz"), **{f"v{i}": v.numpy() for i, v in enumerate(optimizer_state(optimizer))})

    if not use_ray:
        if rank == 0 and state.get("final"):
            write(config["local_output"])
        return
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        write(tmp)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


# ---- driver ------------------------------------------------------------------------------
def train(job: JobConfig) -> dict:
    """Train, keep the best model in ``<output_dir>/<name>/model``, evaluate it, return a summary."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from ray.train import DataConfig

    began = time.time()
    init_ray(job.ray_address)
    require_shared_storage(job.storage_path, "storage_path")
    prep, train_ds = prepare_distributed(job)
    log.info("prepared %s: %d train, %d dev, %d test examples, labels %s", job.name, prep.train_count,
             len(prep.dev), len(prep.test), list(prep.spec.labels)[:12])
    t = job.train
    cpus = os.cpu_count() or 1
    threads = t.tf_threads or max(1, cpus // max(1, t.num_workers))
    storage = job.storage_path or str(Path(job.output_dir, "ray").resolve())
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.use_gpu else {})}
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job, "spec": prep.spec, "vocab": prep.vocab, "dev": prep.dev, "tf_threads": threads},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources,
                                     placement_strategy=t.placement_strategy),
        datasets={"train": train_ds},
        # deterministic sharding: every worker reads all rows and takes its slice of each global batch
        dataset_config=DataConfig(datasets_to_split=[] if t.shard == "deterministic" else "all"),
        run_config=RunConfig(name=job.name, storage_path=storage,
                             checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints,
                                                                checkpoint_score_attribute="dev_score",
                                                                checkpoint_score_order="max"),
                             failure_config=FailureConfig(max_failures=t.max_failures)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {job.name} ended without a checkpoint; see the log above")
    out = job.model_dir
    if out.exists():
        shutil.rmtree(out)
    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, out)
    return finish(job, prep, out, time.time() - began)


def optimizer_state(optimizer) -> list:
    """The variables a resume restores: the optimizer's slots and step, plus, under mixed precision,
    the dynamic loss scale and its good-step counter (``LossScaleOptimizer.variables`` leaves them
    out, and restarting at the initial scale would skip updates the uninterrupted run made)."""
    scale = getattr(optimizer, "_loss_scale", None)
    extra = [scale._current_loss_scale, scale._counter] if hasattr(scale, "_current_loss_scale") else []
    return list(optimizer.variables) + extra


def train_in_process(job: JobConfig) -> dict:
    """The same worker loop without Ray (one process, default strategy): for tests and debugging."""
    began = time.time()
    prep = prepare(job)
    rows = featurize(prep.spec, prep.vocab, prep.train)
    out = job.model_dir
    train_loop_per_worker({"job": job, "spec": prep.spec, "vocab": prep.vocab, "dev": prep.dev, "rows": rows,
                           "tf_threads": job.train.tf_threads, "ray": False, "local_output": str(out)})
    return finish(job, prep, out, time.time() - began)


def finish(job: JobConfig, prep: Prepared, model_dir: Path, seconds: float) -> dict:
    """Evaluate the saved model on test (or dev) from its directory and write the reports."""
    from albert_ray.evaluate import evaluate_examples

    state = json.loads((model_dir / STATE_FILE).read_text())
    (model_dir / "optimizer.npz").unlink(missing_ok=True)  # resume state, not part of the model
    split, examples = ("test", prep.test) if prep.test else ("dev", prep.dev)
    text, report = evaluate_examples(model_dir, examples)
    summary = {"name": job.name, "task": job.task, "model_dir": str(model_dir), "eval_split": split,
               "eval_examples": len(examples), "train_examples": prep.train_count, "skipped_records": prep.skipped,
               "best_dev_score": state["best_score"], "history": state.get("history", []),
               "resumes": state.get("resumes", []), "steps": state.get("steps"),
               "seconds": round(seconds, 1), "metrics": report}
    (model_dir / "metrics.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2))
    (model_dir / "report.txt").write_text(text, encoding="utf-8")
    log.info("%s: evaluated on %d %s examples; report in %s", job.name, len(examples), split, model_dir / "report.txt")
    return summary
