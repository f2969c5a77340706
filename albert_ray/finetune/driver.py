"""Fine-tuning, the driver's side: read the splits and describe the model (:func:`prepare`),
featurise with Ray Data, run :func:`albert_ray.finetune.worker.train_loop_per_worker` under Ray Train's
``TensorflowTrainer`` (or in this process), then evaluate the best model (:func:`finish`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from albert_ray import modeldir, paths
from albert_ray.errors import unwrapped
from albert_ray.finetune.config import JobConfig
from albert_ray.finetune.worker import WorkerConfig, train_loop_per_worker
from albert_ray.io.training_files import Example, read_examples
from albert_ray.model.encoder_config import EncoderConfig, check_fits
from albert_ray.model.tokenization import CharTokenizer, Vocab, build_char_vocab
from albert_ray.paths import not_found
from albert_ray.runtime.attach import (
    every_row_split,
    init_ray,
    require_read_room,
    require_shared_storage,
    require_visible,
    require_visible_folder,
    trainer_class,
)
from albert_ray.runtime.loop import TrainState
from albert_ray.runtime.progress import bars_wanted
from albert_ray.spec import ModelSpec
from albert_ray.tasks.registry import task_for

log = logging.getLogger(__name__)


# ---- driver-side preparation ------------------------------------------------------------
def check_job(job: JobConfig) -> None:
    """Everything a job reads, checked in the driver before Ray starts (one line each): the data
    files, the encoder config against ``model.max_len``, the vocabulary, and a pretrained
    checkpoint loaded whole into a throwaway encoder (layout, names, shapes, readable bytes).

    Raises:
        FileNotFoundError, ValueError (``ConfigError``, ``CheckpointError``).
    """
    for key in ("train", "dev", "test"):
        path = getattr(job.data, key)
        if path and not paths.is_file(path):
            raise not_found(f"data.{key}", path)
    encoder, _ = encoder_and_vocab(job)
    if job.model.pretrained:
        from albert_ray.runtime.attach import import_tensorflow

        import_tensorflow()
        from albert_ray.model.checkpoint import check_checkpoint

        try:
            report = check_checkpoint(encoder, job.model.start_checkpoint())
        except ValueError as exc:
            if job.model.init != "bundled":
                raise
            raise ValueError(  # the default start, met by a shape the user set: say how to leave it
                f"{exc} (the job starts from the bundled encoder, model.init: bundled; "
                "model.init=none starts this shape from random weights)"
            ) from None
        log.info(
            "checkpoint %s (%s): %d tensors fit %s",
            report.prefix,
            report.layout,
            report.assigned,
            job.model.encoder_config,
        )


def encoder_and_vocab(
    job: JobConfig, texts: Sequence[str] | None = None
) -> tuple[EncoderConfig, Vocab | None]:
    """The job's encoder config and vocabulary, checked against each other and ``model.max_len``.
    ``vocab: auto`` builds the vocabulary from ``texts`` (``None``: not yet, only the checks)."""
    encoder = EncoderConfig.from_json_file(job.model.encoder_config)
    if job.model.vocab != "auto":
        vocab = Vocab.from_file(job.model.vocab)
        check_fits(encoder, job.model.max_len, len(vocab), job.model.vocab)
        return encoder, vocab
    check_fits(encoder, job.model.max_len)
    if texts is None:
        return encoder, None
    vocab = build_char_vocab(texts)
    if encoder.vocab_size != len(vocab):
        log.info(
            "vocab: auto -> %d characters from the training data (vocab_size of %s overridden)",
            len(vocab),
            job.model.encoder_config,
        )
        encoder = replace(encoder, vocab_size=len(vocab))
    return encoder, vocab


@dataclass
class Prepared:
    spec: ModelSpec
    vocab: Vocab
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    skipped: dict[str, int]
    train_count: int = 0


def prepare(job: JobConfig) -> Prepared:
    """Read the splits, derive label and token vocabularies, and describe the model."""
    task = task_for(job.task)
    read = dict(
        fmt=job.data.format, on_bad_records=job.data.on_bad_records, **task.read_options(job.model.scheme)
    )
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

    encoder, vocab = encoder_and_vocab(job, [e.text for e in train])
    labels = task.label_vocab(train)
    spec = ModelSpec.from_job(job, labels, encoder)
    return Prepared(
        spec=spec, vocab=vocab, train=train, dev=dev, test=test, skipped=skipped, train_count=len(train)
    )


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
        examples.append(
            Example(
                text=d["text"],
                source=d["source"],
                label=d["label"],
                labels=tuple(d["labels"]) if d["labels"] is not None else None,
                spans=tuple(tuple(x) for x in d["spans"]) if d["spans"] is not None else None,
            )
        )
    rows = featurize(spec, vocab, examples)
    return {"token_ids": [r["token_ids"] for r in rows], "target": [r["target"] for r in rows]}


_CHUNK = 5000  # examples per Arrow block handed from the reading task to Ray Data


def _serialise(examples: Sequence[Example]) -> list[str]:
    return [
        json.dumps(
            {"text": e.text, "source": e.source, "label": e.label, "labels": e.labels, "spans": e.spans},
            ensure_ascii=False,
        )
        for e in examples
    ]


def _prepare_in_task(job: JobConfig):
    """Ray task (a streaming generator): read the splits away from the driver. Yields the
    ``Prepared`` description without the training examples, then the training examples as Arrow
    tables; the caller owns every yielded object, so they outlive this task."""

    prep = prepare(job)
    train = prep.train
    prep.train = []
    prep.train_count = len(train)
    yield prep
    for i in range(0, len(train), _CHUNK):
        yield pa.table({"example": _serialise(train[i : i + _CHUNK])})


FEATURIZE_CPUS = 0.5  # per Ray Data featurise task; they run beside the training workers


def prepare_distributed(job: JobConfig):
    """:func:`prepare` in a Ray task; returns ``(prepared without train examples, dataset of
    training rows)``. The driver holds only the dev / test examples, the vocabularies and object
    references; featurisation runs in Ray Data tasks."""
    import ray

    task = ray.remote(num_cpus=0.5, num_returns="streaming", max_retries=0)(_prepare_in_task)
    gen = task.remote(job)
    try:
        prep = ray.get(next(gen))
    except ray.exceptions.RayTaskError as exc:  # a bad record or label: the reader's one line
        raise unwrapped(exc) from None
    refs = list(gen)
    ds = ray.data.from_arrow_refs(refs).map_batches(
        _featurize_batch,
        fn_kwargs={"spec": prep.spec, "vocab": prep.vocab},
        batch_size=256,
        num_cpus=FEATURIZE_CPUS,
    )
    return prep, ds


# ---- driver ------------------------------------------------------------------------------
def train(job: JobConfig) -> dict:
    """Train, keep the best model in ``<output_dir>/<name>/model``, evaluate it, return a summary."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig

    began = time.time()
    check_job(job)
    init_ray(job.ray_address)
    require_shared_storage(job.storage_path, "storage_path")
    require_visible_job(job)
    require_read_room(job.train.num_workers, job.train.cpus_per_worker, FEATURIZE_CPUS, "the training data")
    prep, train_ds = prepare_distributed(job)
    log.info(
        "prepared %s: %d train, %d dev, %d test examples, labels %s",
        job.name,
        prep.train_count,
        len(prep.dev),
        len(prep.test),
        list(prep.spec.labels)[:12],
    )
    t = job.train
    cpus = os.cpu_count() or 1
    threads = t.tf_threads or max(1, cpus // max(1, t.num_workers))
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.use_gpu else {})}
    worker = WorkerConfig(
        job=job,
        spec=prep.spec,
        vocab=prep.vocab,
        dev=prep.dev,
        tf_threads=threads,
        progress_bar=bars_wanted(),
        tensorboard_dir=job.tensorboard_dir,
    )
    if t.shard == "deterministic":  # every worker reads all rows and takes its slice of each global batch
        data_config = DataConfig(datasets_to_split=[])
    else:
        data_config = every_row_split(train_ds, t.num_workers, f"{job.name}: featurised training")
    trainer = trainer_class()(
        train_loop_per_worker,
        train_loop_config={"worker": worker},
        scaling_config=ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,
            resources_per_worker=resources,
            placement_strategy=t.placement_strategy,
        ),
        datasets={"train": train_ds},
        dataset_config=data_config,
        run_config=RunConfig(
            name=job.name,
            storage_path=job.ray_storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=t.keep_checkpoints,
                checkpoint_score_attribute="dev_score",
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=t.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {job.name} ended without a checkpoint; see the log above")
    out = staging_dir(job)
    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, out)
    return finish(job, prep, out, time.time() - began)


def staging_dir(job: JobConfig) -> Path:
    """Where the driver assembles the model directory: ``job.model_dir`` itself when it is local
    (emptied first), else a local folder that :func:`finish` publishes to the URI."""
    if paths.is_uri(job.model_dir):
        return Path(tempfile.mkdtemp(prefix="albert-ray-model-")) / "model"
    out = Path(job.model_dir)
    if out.exists():
        shutil.rmtree(out)
    return out


def require_visible_job(job: JobConfig) -> None:
    """On a multi-node cluster, local data files and a local Ray Train storage folder
    (``storage_path``, or ``<output_dir>/ray``) must be seen by every node that runs tasks: the
    data are read in a Ray task, and workers write checkpoints and TensorBoard scalars there.
    Checked before any task starts; the model directory itself is written by the driver."""

    data = [
        (p, os.path.getsize(p))
        for p in (job.data.train, job.data.dev, job.data.test)
        if p and not paths.is_uri(p)
    ]
    require_visible("data file", "it is read in a Ray task", data)
    require_visible_folder(
        "storage_path" if job.storage_path else "output_dir",
        "Ray Train's workers write checkpoints and TensorBoard scalars under it",
        job.ray_storage,
    )


def train_in_process(job: JobConfig) -> dict:
    """The same worker loop without Ray (one process, default strategy): for tests and debugging."""
    began = time.time()
    check_job(job)
    prep = prepare(job)
    rows = featurize(prep.spec, prep.vocab, prep.train)
    out = staging_dir(job)
    train_loop_per_worker(
        {
            "worker": WorkerConfig(
                job=job,
                spec=prep.spec,
                vocab=prep.vocab,
                dev=prep.dev,
                tf_threads=job.train.tf_threads,
                rows=rows,
                local_output=str(out),
                progress_bar=bars_wanted(),
                tensorboard_dir=job.tensorboard_dir,
            )
        }
    )
    return finish(job, prep, out, time.time() - began)


def finish(job: JobConfig, prep: Prepared, model_dir: Path, seconds: float) -> dict:
    """Evaluate the saved model on test (or dev) from its directory, write the reports, and
    publish the directory to ``job.model_dir`` when that is a URI."""
    from albert_ray.inference.evaluate import evaluate_examples

    state = TrainState.load(model_dir)
    modeldir.drop_resume_state(model_dir)
    split, examples = ("test", prep.test) if prep.test else ("dev", prep.dev)
    text, report = evaluate_examples(model_dir, examples, page=model_dir, history=state.history)
    summary = {
        "name": job.name,
        "task": job.task,
        "model_dir": paths.without_credentials(job.model_dir),
        "eval_split": split,
        "eval_examples": len(examples),
        "train_examples": prep.train_count,
        "skipped_records": prep.skipped,
        "best_dev_score": state.best_score,
        "history": state.history,
        "resumes": state.resumes,
        "steps": state.steps,
        "seconds": round(seconds, 1),
        "metrics": report,
    }
    (model_dir / modeldir.METRICS_FILE).write_text(json.dumps(summary, ensure_ascii=False, indent=2))
    (model_dir / modeldir.REPORT_FILE).write_text(text, encoding="utf-8")
    if paths.is_uri(job.model_dir):
        modeldir.publish(model_dir, job.model_dir)
        shutil.rmtree(model_dir.parent, ignore_errors=True)
    summary["report_text"] = text
    log.info(
        "%s: evaluated on %d %s examples; report in %s",
        job.name,
        len(examples),
        split,
        paths.join(paths.without_credentials(job.model_dir), modeldir.REPORT_FILE),
    )
    return summary
