"""The self-describing model specification saved as ``model.json`` in a model directory."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from albert_ray.model.encoder_config import EncoderConfig

TRUNCATIONS = ("head", "chunks")
POOLINGS = ("cls", "mean")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")  # of a run, not of a model: not stored here
PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
TRAIN_PRECISIONS = (
    "auto",
    "float32",
    "mixed_float16",
    "mixed_bfloat16",
)  # train.precision: Keras dtype policies


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a task model and decode its outputs.

    Attributes:
        task: a name in the task registry (``classify`` | ``multilabel`` | ``ner``); checked where
            specs come from (job configs at load, ``model.json`` by ``modeldir.check``), so this
            module stays below the registry in the import graph.
        labels: classes, label set, or entity types (sorted).
        encoder: the encoder architecture (a dict as in ``model.json`` is accepted and parsed).
        max_len: tokens per window, [CLS] and [SEP] included.
        stride: characters between window starts for long texts (NER windows, classification chunks).
        truncation: classification of long texts: ``head`` (the reference's) or ``chunks`` (average).
        scheme: NER tag scheme, ``BIO`` or ``BIOES``.
        threshold: multi-label decision threshold (tuned on dev).
        bilstm_units: NER BiLSTM width between encoder and CRF (0 = none).
        dropout: fine-tuning dropout on the encoder and before the head.
        pooling: sentence vector for classification: ``cls`` (the reference's [CLS]) or ``mean``
            (masked mean of the tokens; learns far more reliably from random weights).
        output_norm: a LayerNorm on the encoder's outputs before the head (see :meth:`from_job`).
    """

    task: str
    labels: tuple[str, ...]
    encoder: EncoderConfig
    max_len: int = 128
    stride: int | None = None
    truncation: str = "head"
    scheme: str = "BIO"
    threshold: float = 0.5
    bilstm_units: int = 0
    dropout: float = 0.1
    pooling: str = "cls"
    output_norm: bool = False
    name: str = "model"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.encoder, dict):
            data = dict(self.encoder)
            layout = data.pop("layout", None)
            source = data.pop("source", "model.json:encoder")
            object.__setattr__(self, "encoder", EncoderConfig.from_dict(data, source=source, layout=layout))
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"truncation={self.truncation!r}: must be one of {TRUNCATIONS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}: must be one of {POOLINGS}")
        if not self.labels:
            raise ValueError("labels: the label vocabulary is empty; does the training data carry labels?")

    @classmethod
    def from_job(cls, job, labels: Sequence[str], encoder: EncoderConfig) -> "ModelSpec":
        """The spec of a fine-tuning job (``JobConfig``): its ``model`` section's head settings,
        the labels found in the training data and the encoder architecture.

        ``model.output_norm`` unset: on for a pre-LN encoder started from a checkpoint. A pre-LN
        encoder's output is the un-normalised sum of its blocks' residuals, and pre-training
        makes it larger (the sample encoder after 5 min of masked LM: mean token-vector norm 77
        against 48 at its random start). Measured on CLUENER (bounded recipe, lr 4e-3): from that
        checkpoint 0.4295 without the LayerNorm, 0.5091 with it; from random init 0.4422
        without, 0.4007 with it (hence off there)."""
        m = job.model
        norm = m.output_norm if m.output_norm is not None else (encoder.ln_type == "preln" and m.pretrained)
        return cls(
            task=job.task,
            labels=tuple(labels),
            encoder=encoder,
            max_len=m.max_len,
            stride=m.stride,
            truncation=m.truncation,
            scheme=m.scheme,
            bilstm_units=m.bilstm_units,
            dropout=m.dropout,
            pooling=m.pooling,
            output_norm=norm,
            name=job.name,
        )

    def encoder_config(self) -> EncoderConfig:
        return self.encoder

    @property
    def body_len(self) -> int:
        return self.max_len - 2

    @property
    def window_stride(self) -> int:
        return self.stride or max(1, self.body_len // 2)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``model.json`` (the encoder as its config keys plus ``layout``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["labels"] = list(self.labels)
        d["encoder"] = {**self.encoder.to_dict(), "layout": self.encoder.layout}
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model.json") -> "ModelSpec":
        """Parse ``model.json`` content.

        Raises:
            ValueError: naming ``source`` and the missing, unknown or bad field.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}")
        missing = [
            n
            for n, f in fields.items()
            if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(
                f"{source}: missing field(s) {missing}; a model directory's model.json is written by "
                f"training, not by hand"
            )
        data = dict(data)
        if not isinstance(data["labels"], list) or not all(isinstance(x, str) for x in data["labels"]):
            raise ValueError(f"{source}: labels must be a list of strings")
        data["labels"] = tuple(data["labels"])
        if not isinstance(data["encoder"], dict):
            raise ValueError(f"{source}: encoder must be a JSON object")
        data["encoder"] = {**data["encoder"], "source": f"{source}:encoder"}
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"{source}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}" if not str(exc).startswith(source) else str(exc)) from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        """Read ``model.json``; every problem is a ``ValueError`` naming the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); the file is damaged or truncated") from None
        return cls.from_dict(data, source=str(path))
