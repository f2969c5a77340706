"""The pre-training job's configuration (``albert-ray pretrain --config``): frozen dataclasses
loaded from YAML and dotted overrides, checked on load with errors that name the field. Its own
module so that the corpus read (:mod:`albert_ray.pretrain.corpus`) and masking
(:mod:`albert_ray.pretrain.masking`) can take it without importing the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from albert_ray import paths
from albert_ray.spec import TRAIN_PRECISIONS
from albert_ray.typedconfig import apply_overrides, build, read_yaml

OUTPUT_VOCABULARIES = ("corpus", "full")


@dataclass(frozen=True)
class PretrainModel:
    encoder_config: str | None = None  # default: the checkpoint's own, else data/albert_config_sample.json
    vocab: str | None = None  # a vocab.txt; default: the checkpoint's; "auto": the corpus' characters
    checkpoint: str | None = None  # continue from this checkpoint (domain adaptation)
    max_len: int = 128
    init_range: float | None = None  # std of a random start; default: init_std(encoder), see there


@dataclass(frozen=True)
class PretrainTrain:
    epochs: int = 1
    batch_size: int = 32  # sequences per worker and step
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    mask_rate: float = 0.15
    whole_word_masking: bool = False  # the corpus is word-segmented with spaces: mask whole words
    sentence_order: bool = False  # ALBERT's sentence-order prediction beside the masked LM
    output_vocabulary: str = "corpus"  # the MLM softmax over: corpus (the ids the corpus holds) | full
    max_steps: int = 0  # 0: no limit
    max_minutes: float = 0.0  # wall-clock budget of the training loop; 0: none
    heldout_permille: int = 10  # sequences kept out of training to report MLM loss / accuracy
    precision: str = "auto"  # auto (bf16 where the hardware has it) | float32 | mixed_[b]float16
    xla: bool = False  # jit-compile the training step (XLA)
    seed: int = 42
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    tf_threads: int = 0
    log_every: int = 50
    max_failures: int = 1
    checkpoint_every_steps: int = 0  # also checkpoint within epochs: a killed worker loses at most this many


@dataclass(frozen=True)
class PretrainConfig:
    name: str
    inputs: tuple[str, ...]
    format: str = "auto"
    text_field: str = "text"
    model: PretrainModel = field(default_factory=PretrainModel)
    train: PretrainTrain = field(default_factory=PretrainTrain)
    output_dir: str = "runs"
    storage_path: str | None = None
    ray_address: str | None = None

    @property
    def pretrained_dir(self) -> str:
        """Where the published-layout output goes: ``<output_dir>/<name>/pretrained``, a local
        path or a URI (fine-tuning takes either as ``model.checkpoint``)."""
        return paths.join(self.output_dir, self.name, "pretrained")

    @property
    def ray_storage(self) -> str:
        """Ray Train's storage: ``storage_path``, else ``<output_dir>/ray`` (absolute when local)."""
        return paths.ray_storage(self.storage_path, self.output_dir)


def load_pretrain_config(
    path: str | None, overrides: list[str] | None = None, inputs: list[str] | None = None
) -> PretrainConfig:
    """A :class:`PretrainConfig` from YAML and dotted overrides (``--input`` replaces ``inputs``).

    Raises:
        FileNotFoundError, ValueError: one line naming the field.
    """

    data = apply_overrides(read_yaml(path, "pretrain config") if path else {}, list(overrides or []))
    if inputs:
        data["inputs"] = list(inputs)
    cfg = build(PretrainConfig, data)
    t = cfg.train
    for key, value in (
        ("train.epochs", t.epochs),
        ("train.batch_size", t.batch_size),
        ("model.max_len", cfg.model.max_len),
        ("train.num_workers", t.num_workers),
        ("train.learning_rate", t.learning_rate),
    ):
        if value <= 0:
            raise ValueError(f"{key}={value!r}: must be > 0")
    if cfg.model.init_range is not None and cfg.model.init_range <= 0:
        raise ValueError(f"model.init_range={cfg.model.init_range!r}: must be > 0")
    if not 0 < t.mask_rate < 1:
        raise ValueError(f"train.mask_rate={t.mask_rate!r}: must be in (0, 1)")
    if t.precision not in TRAIN_PRECISIONS:
        raise ValueError(f"train.precision={t.precision!r}: must be one of {list(TRAIN_PRECISIONS)}")
    if t.output_vocabulary not in OUTPUT_VOCABULARIES:
        raise ValueError(
            f"train.output_vocabulary={t.output_vocabulary!r}: must be one of {list(OUTPUT_VOCABULARIES)}"
        )
    if not cfg.inputs:
        raise ValueError("inputs: give at least one file, directory or glob (or --input)")
    return cfg
