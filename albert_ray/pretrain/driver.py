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
:mod:`albert_ray.pretrain.config`; the worker loop in :mod:`albert_ray.pretrain.worker`;
this module owns the model files' resolution and the driver.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from albert_ray import modeldir, paths
from albert_ray.io.corpus import expand_inputs
from albert_ray.model.encoder_config import EncoderConfig, check_fits, checkpoint_folder_files
from albert_ray.model.tokenization import Vocab, build_char_vocab
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
from albert_ray.pretrain.masking import is_heldout
from albert_ray.pretrain.worker import PretrainWorker, pretrain_loop_per_worker
from albert_ray.runtime.attach import (
    every_row_split,
    init_ray,
    require_read_room,
    require_shared_storage,
    require_visible,
    require_visible_folder,
    trainer_class,
)
from albert_ray.runtime.progress import bars_wanted

log = logging.getLogger(__name__)


# ---- the model files -----------------------------------------------------------------------------
def resolve_model_files(cfg: PretrainConfig) -> tuple[EncoderConfig, Vocab]:
    """The encoder config and vocabulary: given, else the checkpoint directory's own."""
    m = cfg.model
    own_config, own_vocab = checkpoint_folder_files(m.checkpoint) if m.checkpoint else (None, None)
    config_file = m.encoder_config or own_config or "data/albert_config_sample.json"
    vocab_file = m.vocab or own_vocab
    if vocab_file is None:
        raise ValueError(
            "model.vocab: give a vocab.txt (the brightmart one), 'auto' (the corpus' characters) or a "
            "model.checkpoint directory that holds one"
        )
    encoder = EncoderConfig.from_json_file(config_file)
    if vocab_file == "auto":
        if m.checkpoint:
            raise ValueError("model.vocab: a checkpoint needs its own vocab.txt, not 'auto'")
        vocab = build_char_vocab(corpus_texts(cfg))
        log.info(
            "vocab: auto -> %d characters from the corpus (vocab_size of %s overridden)",
            len(vocab),
            config_file,
        )
        encoder = replace(encoder, vocab_size=len(vocab))
    else:
        vocab = Vocab.from_file(vocab_file)
    check_fits(encoder, m.max_len, len(vocab), vocab_file)
    return encoder, vocab


# ---- driver ----------------------------------------------------------------------------------------
def pretrain(cfg: PretrainConfig, in_process: bool = False) -> dict:
    """Pre-train; write ``<output_dir>/<name>/pretrained/``; return its summary."""
    began = time.time()
    encoder, vocab = resolve_model_files(cfg)
    if cfg.model.checkpoint:
        from albert_ray.model.checkpoint import check_checkpoint  # TensorFlow: only when there is one

        check_checkpoint(encoder, cfg.model.checkpoint)
    remote = paths.is_uri(cfg.pretrained_dir)
    out = (
        Path(tempfile.mkdtemp(prefix="albert-ray-pretrained-")) / "pretrained"
        if remote
        else Path(cfg.pretrained_dir)
    )
    count = (_pretrain_here if in_process else _pretrain_on_ray)(cfg, encoder, vocab, out)
    (out / modeldir.OPTIMIZER_FILE).unlink(missing_ok=True)
    summary = json.loads((out / "pretrain.json").read_text())
    summary.update(
        name=cfg.name,
        pretrained_dir=paths.without_credentials(cfg.pretrained_dir),
        seconds=round(time.time() - began, 1),
        precision=summary.get("precision", cfg.train.precision),
        corpus=asdict(count),
    )
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
    pretrain_loop_per_worker(
        {"worker": PretrainWorker(cfg, encoder, vocab, t.tf_threads, rows, str(out), bars_wanted())}
    )
    return count


def _pretrain_on_ray(cfg: PretrainConfig, encoder: EncoderConfig, vocab: Vocab, out: Path) -> CorpusCount:
    """Ray Train workers fed by Ray Data read tasks; the corpus count comes from a tally actor."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    t = cfg.train
    require_enough_text(cfg, vocab)
    init_ray(cfg.ray_address)
    require_shared_storage(cfg.storage_path, "storage_path")
    require_visible(
        "input",
        "read tasks open it",
        [(f.path, f.size) for f in expand_inputs(cfg.inputs, cfg.format) if not paths.is_uri(f.path)],
    )
    require_visible_folder(
        "storage_path" if cfg.storage_path else "output_dir",
        "Ray Train's workers write checkpoints under it",
        cfg.ray_storage,
    )
    require_read_room(t.num_workers, t.cpus_per_worker, READ_TASK_CPUS, "the corpus")
    tally = ray.remote(num_cpus=0)(CorpusTally).remote()
    try:
        sequences = sequences_dataset(cfg, vocab, tally)
        split = every_row_split(
            sequences,
            t.num_workers,
            f"{cfg.name}: packed corpus",
            lambda shares: require_a_step_per_share(cfg, shares, peek_tally(tally)),
        )
        threads = t.tf_threads or max(1, (os.cpu_count() or 1) // t.num_workers)
        trainer = trainer_class()(
            pretrain_loop_per_worker,
            train_loop_config={
                "worker": PretrainWorker(cfg, encoder, vocab, threads, progress_bar=bars_wanted())
            },
            scaling_config=ScalingConfig(
                num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker}
            ),
            datasets={"train": sequences},
            dataset_config=split,
            run_config=RunConfig(
                name=f"{cfg.name}-pretrain",
                storage_path=cfg.ray_storage,
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                failure_config=FailureConfig(max_failures=t.max_failures),
            ),
        )
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
