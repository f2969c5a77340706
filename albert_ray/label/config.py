"""The labeling run's configuration (``albert-ray label`` flags or ``--config`` YAML): a frozen
dataclass with laptop-friendly defaults, validated on load."""

from __future__ import annotations

from dataclasses import dataclass

import albert_ray  # noqa: F401 TF_USE_LEGACY_KERAS before TensorFlow
from albert_ray.io.corpus import (
    INPUT_FORMATS,
    ReadOptions,
)
from albert_ray.model.memory_planner import parse_size
from albert_ray.spec import PRECISIONS  # not predict: that imports TensorFlow into the driver
from albert_ray.typedconfig import apply_overrides, build, read_yaml


@dataclass(frozen=True)
class LabelConfig:
    """Settings of a labeling run (laptop-friendly defaults)."""

    model: str
    inputs: tuple[str, ...]
    output: str
    format: str = "auto"  # text | jsonl | csv | parquet | auto (by extension)
    text_field: str = "text"  # JSONL / CSV / Parquet column holding the text
    id_field: str | None = None  # column copied to `id`
    include_text: bool = False
    include_probs: bool = False
    max_chars: int = 100_000  # longer texts are quarantined
    unit_bytes: int = 32 << 20  # plain text / JSONL unit size (resume granularity)
    batch_size: int = 2048  # rows per labeling call (sorted by length inside)
    model_batch_size: int = 32  # windows per forward pass (32 is fastest for 1-thread actors)
    concurrency: int = 0  # labeling actors; 0: auto (see actor_layout)
    num_cpus: float = 0.5  # per actor (fractional: leaves CPUs for the read tasks)
    num_gpus: float = 0.0  # per actor
    tf_threads: int = 0  # per actor; 0: the cluster's CPUs / actors
    precision: str = "auto"  # auto | float32 | bfloat16 | float16
    prune: bool = False  # delete the labels of inputs no longer given
    verify: bool = False  # checksum every committed part before reusing its unit (sizes always)
    progress: bool = True

    def __post_init__(self):
        if self.format not in INPUT_FORMATS + ("auto",):
            raise ValueError(f"format={self.format!r}: must be one of {INPUT_FORMATS + ('auto',)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: must be one of {PRECISIONS}")
        for name in ("max_chars", "unit_bytes", "batch_size", "model_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 1")
        for name in ("concurrency", "num_cpus", "num_gpus", "tf_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 0")
        if not self.inputs:
            raise ValueError("inputs: give at least one file, directory or glob")

    def read_options(self) -> ReadOptions:
        return ReadOptions(self.format, self.text_field, self.id_field, self.max_chars)


def load_label_config(
    path: str | None = None, overrides: list[str] | None = None, given: dict | None = None
) -> LabelConfig:
    """A :class:`LabelConfig` from a YAML file (optional), dotted ``key=value`` overrides, then
    ``given`` values (command-line flags), in that order of precedence. ``unit_bytes`` may be a
    size such as ``32MiB``.

    Raises:
        FileNotFoundError, ValueError: one line naming the file or field.
    """

    data = read_yaml(path, "label config") if path else {}
    data = apply_overrides(data, list(overrides or []))
    data.update(given or {})
    if isinstance(data.get("unit_bytes"), str):
        data["unit_bytes"] = parse_size(data["unit_bytes"])
    return build(LabelConfig, data)
