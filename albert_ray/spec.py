"""The self-describing model specification saved as ``model.json`` in a model directory."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from albert_ray.config import EncoderConfig

TASKS = ("classify", "multilabel", "ner")
TRUNCATIONS = ("head", "chunks")
POOLINGS = ("cls", "mean")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")  # of a run, not of a model: not stored here


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a task model and decode its outputs.

    Attributes:
        task: ``classify`` | ``multilabel`` | ``ner``.
        labels: classes, label set, or entity types (sorted).
        encoder: the encoder architecture (``EncoderConfig.to_dict()`` plus ``layout``).
        max_len: tokens per window, [CLS] and [SEP] included.
        stride: characters between window starts for long texts (NER windows, classification chunks).
        truncation: classification of long texts: ``head`` (the reference's) or ``chunks`` (average).
        scheme: NER tag scheme, ``BIO`` or ``BIOES``.
        threshold: multi-label decision threshold (tuned on dev).
        bilstm_units: NER BiLSTM width between encoder and CRF (0 = none).
        dropout: fine-tuning dropout on the encoder and before the head.
        pooling: sentence vector for classification: ``cls`` (the reference's [CLS]) or ``mean``
            (masked mean of the tokens; learns far more reliably from random weights).
    """

    task: str
    labels: tuple[str, ...]
    encoder: dict[str, Any]
    max_len: int = 128
    stride: int | None = None
    truncation: str = "head"
    scheme: str = "BIO"
    threshold: float = 0.5
    bilstm_units: int = 0
    dropout: float = 0.1
    pooling: str = "cls"
    name: str = "model"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: must be one of {TASKS}")
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"truncation={self.truncation!r}: must be one of {TRUNCATIONS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}: must be one of {POOLINGS}")
        if not self.labels:
            raise ValueError("labels: the label vocabulary is empty; does the training data carry labels?")

    def encoder_config(self) -> EncoderConfig:
        data = dict(self.encoder)
        layout = data.pop("layout")
        return EncoderConfig.from_dict(data, source="model.json:encoder", layout=layout)

    @property
    def body_len(self) -> int:
        return self.max_len - 2

    @property
    def window_stride(self) -> int:
        return self.stride or max(1, self.body_len // 2)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        data = dict(data)
        data["labels"] = tuple(data["labels"])
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
