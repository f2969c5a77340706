"""Typed job configs: frozen dataclasses loaded from YAML, dotted overrides, validated on load.

Relative paths in a config are resolved against the current working directory (the repository
root locally, the job's ``working_dir`` on a cluster).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from albert_ray import paths
from albert_ray.io.training_files import BAD_RECORD_POLICIES, FORMATS
from albert_ray.model.bundled import bundled_dir
from albert_ray.model.encoder_config import checkpoint_folder_files
from albert_ray.spec import POOLINGS, TRAIN_PRECISIONS, TRUNCATIONS
from albert_ray.tasks.label_encoding import SCHEMES
from albert_ray.tasks.registry import task_names
from albert_ray.typedconfig import ConfigFileError, apply_overrides, build, flatten, read_yaml

JobConfigError = ConfigFileError  # the name job-config callers know


@dataclass(frozen=True)
class DataConfig:
    train: str
    dev: str | None = None
    test: str | None = None
    format: str = "auto"
    on_bad_records: str = "error"
    dev_fraction: float = 0.1  # carved from train when no dev file is given
    max_train_examples: int | None = None
    max_eval_examples: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    encoder_config: str = "data/albert_config_sample.json"
    vocab: str = "auto"  # a vocab.txt, or "auto": characters of the training data
    init: str = "bundled"  # bundled (the encoder shipped in albert_ray/model/), none (random) or checkpoint
    checkpoint: str | None = None
    max_len: int = 128
    stride: int | None = None
    truncation: str = "head"
    scheme: str = "BIO"
    bilstm_units: int = 0
    dropout: float = 0.1
    pooling: str = "cls"  # classification sentence vector: cls (reference) | mean
    output_norm: bool | None = None  # LayerNorm on the encoder's output; None: auto (see ModelSpec.from_job)

    @property
    def pretrained(self) -> bool:
        """Whether the encoder starts from pre-trained weights (``bundled`` or ``checkpoint``)."""
        return self.init != "none"

    def start_checkpoint(self) -> str | None:
        """The checkpoint the encoder starts from, resolved in this process (the bundled encoder's
        folder is the one in this process's own install, on whichever node it runs); None: random."""
        if self.init == "bundled":
            return str(bundled_dir())
        return self.checkpoint if self.init == "checkpoint" else None


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32  # per worker
    learning_rate: float = 5e-5  # for the reference global batch `lr_reference_batch`
    lr_scaling: str = "linear"  # "linear": lr * global_batch / lr_reference_batch; "none"
    lr_reference_batch: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    patience: int = 2  # epochs without dev improvement before stopping
    seed: int = 42
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # with use_gpu
    placement_strategy: str = "PACK"  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    shard: str = "ray"  # "ray": Ray Data shards; "deterministic": exact N-worker = 1-worker steps
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    bucket_by_length: bool = True  # sort by length in pools and pad per batch (False: pad to max_len)
    precision: str = "auto"  # auto (bf16 where the hardware has it) | float32 | mixed_[b]float16
    mixed_precision: bool = False  # alias of precision: mixed_float16 (ALBERT layouts)
    xla: bool = False  # jit-compile the training step
    checkpoint_every_steps: int = 0  # 0: checkpoint at epoch ends only
    keep_checkpoints: int = 3  # best k by dev score (the latest is always kept too)
    max_failures: int = 1  # worker failures Ray Train recovers from (resume from checkpoint)
    tf_threads: int = 0  # 0: the CPUs of the worker's node divided by local workers
    log_every: int = 20  # steps between progress lines (0: none)


@dataclass(frozen=True)
class JobConfig:
    name: str
    task: str
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs"
    storage_path: str | None = None  # Ray Train storage (shared FS / s3://...); default <output_dir>/ray
    ray_address: str | None = None  # None: $RAY_ADDRESS if set (inside a Ray job), else a local Ray

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def policy(self) -> str:
        """The precision setting (``train.mixed_precision: true`` means mixed_float16); ``auto`` is
        resolved where the model is built, by :attr:`~albert_ray.finetune.worker.WorkerConfig.policy`."""
        return "mixed_float16" if self.train.mixed_precision else self.train.precision

    @property
    def model_dir(self) -> str:
        """Where the best model goes: ``<output_dir>/<name>/model``, a local path or a URI."""
        return paths.join(self.output_dir, self.name, "model")

    @property
    def ray_storage(self) -> str:
        """Ray Train's storage: ``storage_path``, else ``<output_dir>/ray`` (absolute when local)."""
        return paths.ray_storage(self.storage_path, self.output_dir)

    @property
    def tensorboard_dir(self) -> str:
        """TensorBoard scalars: ``<Ray Train's storage>/<name>/tensorboard`` (a URI too:
        :class:`~albert_ray.reports.scalars.Scalars` writes locally and copies the files there)."""
        return paths.join(self.ray_storage, self.name, "tensorboard")


_CHOICES = {
    "data.format": FORMATS + ("auto",),
    "data.on_bad_records": BAD_RECORD_POLICIES,
    "model.init": ("bundled", "none", "checkpoint"),
    "model.truncation": TRUNCATIONS,
    "model.pooling": POOLINGS,
    "model.scheme": SCHEMES,
    "train.lr_scaling": ("linear", "none"),
    "train.placement_strategy": ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
    "train.shard": ("ray", "deterministic"),
    "train.precision": TRAIN_PRECISIONS,
}
_NON_NEGATIVE = (
    "model.bilstm_units",
    "train.patience",
    "train.weight_decay",
    "train.gpus_per_worker",
    "train.checkpoint_every_steps",
    "train.max_failures",
    "train.tf_threads",
    "train.log_every",
)
_POSITIVE = {
    "model.max_len",
    "train.epochs",
    "train.batch_size",
    "train.num_workers",
    "train.lr_reference_batch",
    "train.learning_rate",
    "train.cpus_per_worker",
    "train.grad_accum_steps",
    "train.keep_checkpoints",
}


def _validate(cfg: JobConfig) -> None:
    flat = flatten(cfg.to_dict())
    for key, allowed in {"task": task_names(), **_CHOICES}.items():
        if flat[key] not in allowed:
            raise JobConfigError(f"{key}={flat[key]!r}: must be one of {list(allowed)}")
    for key in _POSITIVE:
        if not flat[key] > 0:
            raise JobConfigError(f"{key}={flat[key]!r}: must be > 0")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise JobConfigError(f"model.dropout={cfg.model.dropout!r}: must be in [0, 1)")
    if not 0.0 <= cfg.train.warmup_ratio < 1.0:
        raise JobConfigError(f"train.warmup_ratio={cfg.train.warmup_ratio!r}: must be in [0, 1)")
    if not 0.0 < cfg.data.dev_fraction < 1.0:
        raise JobConfigError(f"data.dev_fraction={cfg.data.dev_fraction!r}: must be in (0, 1)")
    if cfg.model.max_len < 3:
        raise JobConfigError(f"model.max_len={cfg.model.max_len}: must be >= 3 ([CLS] + text + [SEP])")
    for key in _NON_NEGATIVE:
        if flat[key] < 0:
            raise JobConfigError(f"{key}={flat[key]!r}: must be >= 0")
    for key in ("data.max_train_examples", "data.max_eval_examples"):
        if flat[key] is not None and flat[key] < 1:
            raise JobConfigError(f"{key}={flat[key]!r}: must be >= 1, or empty for all examples")
    body = cfg.model.max_len - 2
    if cfg.model.stride is not None and not 1 <= cfg.model.stride <= body:
        raise JobConfigError(
            f"model.stride={cfg.model.stride}: must be in [1, {body}] (model.max_len - 2), or empty "
            f"for half a window"
        )
    if cfg.train.mixed_precision and cfg.train.precision == "mixed_bfloat16":
        raise JobConfigError(
            "train.mixed_precision=true (mixed_float16) contradicts train.precision=mixed_bfloat16; give one"
        )
    if cfg.policy not in ("float32", "auto") and Path(cfg.model.encoder_config).is_file():
        from albert_ray.model.encoder_config import EncoderConfig

        setting = (
            "train.mixed_precision=true" if cfg.train.mixed_precision else f"train.precision={cfg.policy}"
        )
        if EncoderConfig.from_json_file(cfg.model.encoder_config).layout == "bert":
            raise JobConfigError(
                f"{setting}: not available for the BERT layout of "
                f"{cfg.model.encoder_config} (built by keras-bert's get_model, whose attention "
                f"is float32-only); ALBERT layouts support it"
            )
    if cfg.model.init == "checkpoint" and not cfg.model.checkpoint:
        raise JobConfigError("model.checkpoint: required when model.init is 'checkpoint'")
    if cfg.model.pretrained and cfg.model.vocab == "auto":
        raise JobConfigError(
            f"model.vocab: a pre-trained start (model.init={cfg.model.init}) needs its own vocab.txt, not 'auto'"
        )


def _checkpoint_defaults(data: dict, overridden: set[str]) -> None:
    """``model.init: bundled`` (the default), or ``checkpoint`` with a checkpoint directory (a
    brightmart release folder, or one written by ``albert-ray pretrain``): the folder's config JSON
    (when it holds exactly one) and ``vocab.txt`` replace the config file's ``encoder_config`` /
    ``vocab`` — those describe a random-init model — unless given as command-line overrides."""
    model = data.setdefault("model", {})
    if not isinstance(model, dict):
        return
    init = model.get("init", ModelConfig.init)
    if init == "bundled":
        folder = str(bundled_dir())
    elif init == "checkpoint" and model.get("checkpoint"):
        folder = str(model["checkpoint"])
    else:
        return
    config, vocab = checkpoint_folder_files(folder)
    if "model.encoder_config" not in overridden and config:
        model["encoder_config"] = config
    if "model.vocab" not in overridden and vocab:
        model["vocab"] = vocab


def load_job_config(
    path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None
) -> JobConfig:
    """Load a YAML job config (or a dict), apply overrides, validate.

    Raises:
        FileNotFoundError, JobConfigError.
    """
    if data is None:
        data = read_yaml(path, "job config")
    data = apply_overrides(copy.deepcopy(data), list(overrides or []))
    _checkpoint_defaults(data, {o.split("=", 1)[0].strip() for o in overrides or []})
    cfg = build(JobConfig, data)
    _validate(cfg)
    return cfg
