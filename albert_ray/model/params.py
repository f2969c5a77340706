"""Parameter table: every encoder config in a folder, with a classification head on [CLS]."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from albert_ray.model.encoder_config import EncoderConfig
from albert_ray.paths import not_found

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParamRow:
    name: str
    layout: str
    total: int
    trainable: int


def count_params(config: EncoderConfig, num_classes: int = 5, seq_len: int = 512) -> ParamRow:
    """Build the encoder plus a ``num_classes`` softmax head on [CLS] and count its parameters."""
    from tensorflow import keras

    from albert_ray.model.encoder import build_encoder

    encoder = build_encoder(config, seq_len=seq_len)
    probs = keras.layers.Dense(num_classes, activation="softmax", name="Classifier")(encoder.outputs[1])
    model = keras.Model(encoder.inputs, probs)
    trainable = sum(int(w.shape.num_elements()) for w in model.trainable_weights)
    total = trainable + sum(int(w.shape.num_elements()) for w in model.non_trainable_weights)
    keras.backend.clear_session()
    return ParamRow(Path(config.source).stem, config.layout, total, trainable)


def params_table(config_dir: str | Path, num_classes: int = 5, seq_len: int = 512) -> list[ParamRow]:
    """Count parameters for every ``*config*.json`` in ``config_dir``.

    Raises:
        FileNotFoundError: the folder does not exist or has no config files.
    """
    folder = Path(config_dir)
    if not folder.is_dir():
        raise not_found("config folder", folder)
    files = sorted(folder.glob("*config*.json"))
    if not files:
        raise FileNotFoundError(f"no *config*.json files in {folder}")
    rows = []
    for path in files:
        log.info("building %s", path.name)
        rows.append(count_params(EncoderConfig.from_json_file(path), num_classes, seq_len))
    return rows


def format_table(rows: list[ParamRow]) -> str:
    """A fixed-width text table of the rows."""
    width = max(len(r.name) for r in rows)
    lines = [f"{'model':<{width}}  {'layout':<17}  {'total params':>14}  {'trainable':>14}"]
    lines += [f"{r.name:<{width}}  {r.layout:<17}  {r.total:>14,}  {r.trainable:>14,}" for r in rows]
    return "\n".join(lines)
