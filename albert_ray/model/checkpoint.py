"""Read and write TensorFlow (TF1 name-based) checkpoints of BERT / ALBERT encoders.

The layout of a checkpoint is detected from its variable names, so that loading a Google-format
ALBERT with a brightmart config (the classic "word_embeddings_2 not found") says which layout
the checkpoint really is instead of failing deep inside TensorFlow.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow import keras

import albert_ray  # noqa: F401
from albert_ray import paths
from albert_ray.errors import first_line
from albert_ray.model.encoder import encoder_for
from albert_ray.model.encoder_config import EncoderConfig

log = logging.getLogger(__name__)

_LAYOUT_NAMES = {
    "albert_brightmart": "brightmart ALBERT (albert_zh: word_embeddings_2, encoder/layer_shared)",
    "albert_google": "Google-format ALBERT (embedding_hidden_mapping_in, transformer/group_N/inner_group_M)",
    "bert": "BERT (encoder/layer_N)",
}
_CONFIG_HINT = {
    "albert_brightmart": "a brightmart albert_config_*.json (with embedding_size and ln_type)",
    "albert_google": "a Google-format albert_config_*_google.json (with num_hidden_groups)",
    "bert": "a bert_config.json (without embedding_size)",
}
# Variables a fine-tuning encoder does not use: pre-training heads, the pooler, optimizer slots.
_IGNORED = re.compile(r"^(?!bert/)|^bert/pooler/|(/adam_[mv]|/Adam(_\d+)?|/Momentum)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the requested encoder."""


@dataclass(frozen=True)
class LoadReport:
    """What a load did: the checkpoint prefix, its layout, and how many tensors were assigned."""

    prefix: str
    layout: str
    assigned: int
    ignored: tuple[str, ...]


def resolve_checkpoint(path: str | Path) -> str:
    """Turn a directory, a prefix, or an ``.index`` / ``.data-*`` path into a checkpoint prefix.

    A ``checkpoint`` state file that points to a path that no longer exists (albert_zh's
    base_36k release ships one with the author's absolute path) falls back to the basename it
    names inside the same directory, then to the only ``*.index`` file there.

    Raises:
        FileNotFoundError: nothing loadable was found; the message says what was looked for.
    """
    p = Path(path)
    text = str(path)
    m = re.match(r"^(.*)\.(index|data-\d{5}-of-\d{5})$", text)
    if m:
        text = m.group(1)
        p = Path(text)
    if Path(text + ".index").is_file():
        return text
    if p.is_dir():
        tried = []
        state = p / "checkpoint"
        if state.is_file():
            named = tf.train.get_checkpoint_state(str(p))
            candidate = named.model_checkpoint_path if named else ""
            for c in (candidate, str(p / Path(candidate).name)) if candidate else ():
                tried.append(c)
                if Path(c + ".index").is_file():
                    return c
            if candidate:
                log.warning(
                    "%s points to %s, which does not exist; looking for *.index in %s", state, candidate, p
                )
        indexes = sorted(p.glob("*.index"))
        if len(indexes) == 1:
            return str(indexes[0])[: -len(".index")]
        if len(indexes) > 1:
            raise FileNotFoundError(
                f"{p} holds several checkpoints ({', '.join(i.name for i in indexes)}); pass one prefix, "
                f"e.g. {str(indexes[-1])[: -len('.index')]}"
            )
        found = (
            f"its 'checkpoint' file names {', '.join(tried)}, which do not exist"
            if tried
            else "it holds no 'checkpoint' file"
        )
        raise FileNotFoundError(
            f"no TensorFlow checkpoint in directory {p}: {found}, and no '<prefix>.index' file"
        )
    raise FileNotFoundError(
        f"no TensorFlow checkpoint at {path}: neither a directory nor a prefix with a '{text}.index' file"
    )


def detect_layout(names) -> str:
    """Tell the checkpoint layout from its variable names.

    Raises:
        CheckpointError: the names fit none of the known layouts.
    """
    names = list(names)
    if any(
        n.startswith(("bert/encoder/transformer/group_", "bert/encoder/embedding_hidden_mapping_in"))
        for n in names
    ):
        return "albert_google"
    if any(
        n == "bert/embeddings/word_embeddings_2" or n.startswith("bert/encoder/layer_shared/") for n in names
    ):
        return "albert_brightmart"
    if any(re.match(r"^bert/encoder/layer_\d+/", n) for n in names):
        return "bert"
    sample = ", ".join(sorted(names)[:8])
    raise CheckpointError(
        f"cannot tell the layout of this checkpoint: no bert/encoder variables of BERT, brightmart ALBERT or "
        f"Google ALBERT (first variables: {sample})"
    )


def load_checkpoint(model: keras.Model, config: EncoderConfig, path: str | Path) -> LoadReport:
    """Assign every encoder weight of ``model`` from a checkpoint.

    ``model`` is an encoder from :func:`albert_ray.model.encoder.build_encoder` or any model containing
    its layers (a task model), built from ``config``.

    Raises:
        FileNotFoundError: see :func:`resolve_checkpoint`.
        CheckpointError: wrong layout for the config, or missing / unexpected variables and shape
            conflicts, all listed in one message.
    """
    if paths.is_uri(path):  # each node fetches it itself into its own cache
        path = paths.local_folder(path)
    prefix = resolve_checkpoint(path)
    reader, shapes = _open(prefix, config)
    vmap = encoder_for(config).variable_map()
    assignments = _matched_weights(model, vmap, shapes, prefix, config)
    for weight, var in assignments:
        try:
            value = read_float32(reader, var)
        except (tf.errors.OpError, IndexError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {prefix}: variable {var} cannot be read ({first_line(exc)}); its "
                f"data file is damaged or truncated"
            ) from None
        weight.assign(value)
    ignored = tuple(sorted(set(shapes) - {v for names in vmap.values() for v in names}))
    log.info(
        "loaded %d tensors from %s (%s); ignored %d (pooler / pre-training heads / optimizer slots)",
        len(assignments),
        prefix,
        config.layout,
        len(ignored),
    )
    return LoadReport(prefix=prefix, layout=config.layout, assigned=len(assignments), ignored=ignored)


def read_float32(reader, name: str) -> np.ndarray:
    """A checkpoint tensor, float16 / bfloat16 ones (the bundled encoder stores float16) as float32."""
    value = reader.get_tensor(name)
    if value.dtype.name in ("float16", "bfloat16"):
        return value.astype(np.float32)
    return value


def _open(prefix: str, config: EncoderConfig):
    """The checkpoint's reader and its variables' shapes, once its layout is ``config``'s."""
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {prefix}: its index file {prefix}.index cannot be read "
            f"({first_line(exc)}); it is damaged or truncated"
        ) from None
    shapes = reader.get_variable_to_shape_map()
    layout = detect_layout(shapes)
    if layout != config.layout:
        raise CheckpointError(
            f"checkpoint {prefix} is a {_LAYOUT_NAMES[layout]} checkpoint, but config {config.source} describes "
            f"a {_LAYOUT_NAMES[config.layout]} model; use {_CONFIG_HINT[layout]} with this checkpoint"
        )
    return reader, shapes


def _matched_weights(
    model: keras.Model, vmap: dict, shapes: dict, prefix: str, config: EncoderConfig
) -> list:
    """``(weight, variable name)`` for every encoder weight of ``model``; every missing or
    unexpected variable and shape conflict is listed in one :class:`CheckpointError`."""
    wanted = {v for names in vmap.values() for v in names}
    missing = sorted(wanted - set(shapes))
    unexpected = sorted({n for n in shapes if not _IGNORED.search(n)} - wanted)
    conflicts, assignments = [], []
    for layer_name, var_names in vmap.items():
        weights = _find_layer(model, layer_name).weights
        if len(weights) != len(var_names):
            raise CheckpointError(
                f"layer {layer_name} has {len(weights)} weights, mapping names {len(var_names)}"
            )
        for weight, var in zip(weights, var_names):
            if var not in shapes:
                continue
            if tuple(shapes[var]) != tuple(weight.shape):
                conflicts.append(f"{var}: checkpoint {list(shapes[var])} vs model {list(weight.shape)}")
            else:
                assignments.append((weight, var))
    if missing or unexpected or conflicts:
        parts = [
            f"checkpoint {prefix} does not match config {config.source} ({_LAYOUT_NAMES[config.layout]}):"
        ]
        if missing:
            parts.append(f"missing variables ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected variables ({len(unexpected)}): {', '.join(unexpected)}")
        if conflicts:
            parts.append(f"shape conflicts ({len(conflicts)}): {'; '.join(conflicts)}")
        raise CheckpointError(" ".join(parts[:1]) + " " + "; ".join(parts[1:]))
    return assignments


def check_checkpoint(config: EncoderConfig, path: str | Path) -> LoadReport:
    """Resolve a checkpoint and load it whole into a throwaway encoder built from ``config``:
    layout, variable names, shapes and every tensor's bytes. For drivers, before any worker
    starts (a worker that meets a bad checkpoint would be retried by Ray Train)."""
    from albert_ray.model.encoder import build_encoder

    return load_checkpoint(build_encoder(config), config, path)


def encoder_variables(model: keras.Model, config: EncoderConfig) -> dict[str, np.ndarray]:
    """The encoder weights of ``model`` under their checkpoint names (the layout of ``config``)."""
    out = {}
    for layer_name, var_names in encoder_for(config).variable_map().items():
        for weight, var in zip(_find_layer(model, layer_name).weights, var_names):
            out[var] = weight.numpy()
    return out


def write_variables(prefix: str | Path, variables: dict[str, np.ndarray]) -> str:
    """Write named arrays as a TF1-style name-based checkpoint (readable by ``tf.train.load_checkpoint``
    and Google's / brightmart's TF1 code), plus the ``checkpoint`` state file next to it."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(variables)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.convert_to_tensor(np.asarray(variables[n])) for n in names],
    )
    (prefix.parent / "checkpoint").write_text(
        f'model_checkpoint_path: "{prefix.name}"\nall_model_checkpoint_paths: "{prefix.name}"\n'
    )
    return str(prefix)


def save_checkpoint(model: keras.Model, config: EncoderConfig, prefix: str | Path) -> str:
    """Export the encoder part of ``model`` in its layout's checkpoint format."""
    return write_variables(prefix, encoder_variables(model, config))


def _find_layer(model: keras.Model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                try:
                    return layer.get_layer(name)
                except ValueError:
                    continue
    raise CheckpointError(f"model {model.name} has no layer {name}; was it built from this config?")
