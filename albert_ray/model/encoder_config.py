"""Encoder architecture configs (``albert_config*.json`` / ``bert_config.json``).

The architecture is read from the checkpoint's own JSON file, never duplicated in job configs.
Three layouts exist and are told apart by their keys:

* ``bert``: no ``embedding_size`` (chinese_L-12_H-768_A-12).
* ``albert_google``: ``num_hidden_groups`` / ``inner_group_num`` (Google ALBERT, ``*_google*.json``).
* ``albert_brightmart``: ``embedding_size`` without the Google group keys (brightmart albert_zh).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from albert_ray import paths
from albert_ray.paths import not_found

LAYOUTS = ("albert_brightmart", "albert_google", "bert")
ACTIVATIONS = ("gelu", "gelu_new", "relu", "tanh", "swish", "linear")
LN_TYPES = ("postln", "preln")

# Keys that published configs carry but that do not change the encoder we build
# (pooler settings of the pre-training heads, initializer, comments).
_INFORMATIONAL_KEYS = {
    "directionality",
    "pooler_fc_size",
    "pooler_num_attention_heads",
    "pooler_num_fc_layers",
    "pooler_size_per_head",
    "pooler_type",
    "model_type",
    "layer_norm_eps",
}


class ConfigError(ValueError):
    """An encoder config that is unreadable, unknown or inconsistent."""


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of a BERT / ALBERT encoder.

    Attributes mirror the JSON keys; ``layout`` is derived from the keys present unless given.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    embedding_size: int | None = None
    ln_type: str = "postln"
    num_hidden_groups: int = 1
    inner_group_num: int = 1
    net_structure_type: int = 0
    gap_size: int = 0
    num_memory_blocks: int = 0
    down_scale_factor: int = 1
    initializer_range: float = 0.02
    layout: str = "bert"
    source: str = field(default="<dict>", compare=False)  # where it was read; not part of the architecture

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(
        cls, data: dict[str, Any], source: str = "<dict>", layout: str | None = None
    ) -> "EncoderConfig":
        """Build and validate a config from a parsed JSON dict.

        Raises:
            ConfigError: naming ``source`` and the offending key.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)} - {"layout", "source"}
        unknown = sorted(set(data) - fields - _INFORMATIONAL_KEYS)
        if unknown:
            raise ConfigError(
                f"{source}: unknown config key(s) {unknown}; known keys are {sorted(fields | _INFORMATIONAL_KEYS)}"
            )
        required = [
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        ]
        missing = [k for k in required if k not in data]
        if missing:
            raise ConfigError(f"{source}: missing required key(s) {missing}")
        if layout is None:
            layout = detect_config_layout(data)
        kwargs = {k: v for k, v in data.items() if k in fields}
        cfg = cls(**kwargs, layout=layout, source=source)
        cfg.validate()
        return cfg

    @classmethod
    def from_json_file(cls, path: str | Path, layout: str | None = None) -> "EncoderConfig":
        """Read ``albert_config*.json`` / ``bert_config.json``.

        Raises:
            FileNotFoundError: the file does not exist.
            ConfigError: the JSON is malformed or inconsistent.
        """
        path = Path(path)
        if not path.is_file():
            raise not_found("encoder config", path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path), layout=layout)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable architecture (what ``from_dict`` reads back)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("source", "layout")}
        if self.layout == "bert":
            for key in (
                "embedding_size",
                "ln_type",
                "num_hidden_groups",
                "inner_group_num",
                "net_structure_type",
                "gap_size",
                "num_memory_blocks",
                "down_scale_factor",
            ):
                out.pop(key)
        elif self.layout == "albert_brightmart":
            for key in (
                "num_hidden_groups",
                "inner_group_num",
                "net_structure_type",
                "gap_size",
                "num_memory_blocks",
                "down_scale_factor",
            ):
                out.pop(key)
        else:
            out.pop("ln_type")
        return out

    # ---- validation ---------------------------------------------------------------------
    def _fail(self, key: str, message: str) -> None:
        raise ConfigError(f"{self.source}: {key}={getattr(self, key)!r}: {message}")

    def validate(self) -> None:
        """Check types, ranges and cross-key consistency."""
        if self.layout not in LAYOUTS:
            self._fail("layout", f"must be one of {LAYOUTS}")
        for key in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "num_hidden_groups",
            "inner_group_num",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                self._fail(key, "must be a positive integer")
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                self._fail(key, "must be a number in [0, 1)")
        if self.hidden_act not in ACTIVATIONS:
            self._fail("hidden_act", f"must be one of {ACTIVATIONS}")
        if self.hidden_size % self.num_attention_heads:
            self._fail("hidden_size", f"must be divisible by num_attention_heads={self.num_attention_heads}")
        if self.ln_type not in LN_TYPES:
            self._fail("ln_type", f"must be one of {LN_TYPES}")
        if self.layout == "bert":
            if self.embedding_size not in (None, self.hidden_size):
                self._fail("embedding_size", "a BERT config has no separate embedding size")
            if self.type_vocab_size != 2:
                # keras-bert's builder hard-codes two segment ids.
                self._fail("type_vocab_size", "keras-bert's BERT builder supports exactly 2 segment types")
        else:
            if not isinstance(self.embedding_size, int) or self.embedding_size < 1:
                self._fail("embedding_size", "an ALBERT config needs a positive integer embedding_size")
        if self.layout == "albert_brightmart" and (self.num_hidden_groups, self.inner_group_num) != (1, 1):
            self._fail(
                "num_hidden_groups", "brightmart ALBERT shares one block; groups are Google-format keys"
            )
        if self.layout == "albert_google":
            if self.ln_type != "postln":
                self._fail("ln_type", "Google-format ALBERT is post-LN only")
        for key, neutral in (
            ("net_structure_type", 0),
            ("gap_size", 0),
            ("num_memory_blocks", 0),
            ("down_scale_factor", 1),
        ):
            if getattr(self, key) != neutral:
                self._fail(key, f"only {neutral} is supported (the value every published ALBERT uses)")

    # ---- derived ------------------------------------------------------------------------
    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def group_of_layer(self, layer_index: int) -> int:
        """Google ALBERT's group for a layer: ``int(layer_idx / num_hidden_layers * num_hidden_groups)``."""
        return int(layer_index / self.num_hidden_layers * self.num_hidden_groups)

    def used_groups(self) -> list[int]:
        """Groups that own variables (Google ALBERT creates a group's variables on first use)."""
        return sorted({self.group_of_layer(i) for i in range(self.num_hidden_layers)})

    def with_dropout(self, rate: float | None) -> "EncoderConfig":
        """Copy with fine-tuning dropout (published configs ship 0.0); ``None`` keeps the file's values."""
        if rate is None:
            return self
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"dropout={rate!r}: must be a number in [0, 1)")
        return dataclasses.replace(self, hidden_dropout_prob=rate, attention_probs_dropout_prob=rate)


def detect_config_layout(data: dict[str, Any]) -> str:
    """Tell the layout from the keys of a config dict."""
    if "embedding_size" not in data:
        return "bert"
    if "num_hidden_groups" in data or "inner_group_num" in data:
        return "albert_google"
    return "albert_brightmart"


def check_fits(
    encoder: EncoderConfig, max_len: int, vocab_len: int | None = None, vocab_file: str | None = None
) -> None:
    """The vocabulary and the sequence length a run uses against the encoder that has to hold them.

    Raises:
        ValueError: naming both files and the values.
    """
    if vocab_len is not None and vocab_len != encoder.vocab_size:
        raise ValueError(
            f"{vocab_file} has {vocab_len} tokens but {encoder.source} says vocab_size="
            f"{encoder.vocab_size}; use the vocab.txt that came with the checkpoint"
        )
    if max_len > encoder.max_position_embeddings:
        raise ValueError(
            f"model.max_len={max_len} exceeds max_position_embeddings={encoder.max_position_embeddings} "
            f"of {encoder.source}"
        )


def checkpoint_folder_files(checkpoint: str) -> tuple[str | None, str | None]:
    """The config JSON (when the folder holds exactly one) and ``vocab.txt`` beside a checkpoint
    (a brightmart release folder, or one written by ``albert-ray pretrain``)."""
    folder = paths.local_folder(checkpoint) if paths.is_uri(checkpoint) else Path(checkpoint)
    folder = folder if folder.is_dir() else folder.parent
    configs = sorted(folder.glob("albert_config*.json")) + sorted(folder.glob("bert_config*.json"))
    vocab = folder / "vocab.txt"
    return (str(configs[0]) if len(configs) == 1 else None), (str(vocab) if vocab.is_file() else None)
