"""The model directory: its file names, writing, checking and loading, and the resume state a
training checkpoint adds to it. The one owner of the format.

A model directory is self-describing: ``model.weights.h5`` (weights), ``model.json`` (the
:class:`~albert_ray.spec.ModelSpec`: task, labels, encoder architecture, head settings),
``vocab.txt`` and ``job.json`` (the training job). Training adds ``metrics.json`` and
``report.txt``; a training checkpoint also holds ``train_state.json`` and ``optimizer.npz``.

:func:`check` reads only metadata and small files (no TensorFlow), so drivers run it before any
Ray worker starts; every problem is one :class:`ModelDirError` line naming the file.

A model directory may live at any location :mod:`albert_ray.paths` opens (a local folder,
``s3://...``): :func:`local_copy` fetches one at a URI into a local cache once (checked against
its listing), :func:`publish` writes a finished one there, and :func:`pack` / :func:`unpack` carry
the files a model needs through Ray's object store to processes on nodes that cannot see the
driver's disk.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import h5py
import numpy as np

from albert_ray import paths
from albert_ray.errors import first_line
from albert_ray.model.tokenization import Vocab
from albert_ray.paths import where
from albert_ray.spec import PRECISION_POLICIES, ModelSpec
from albert_ray.tasks.registry import build_task_model, task_for

SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.weights.h5"
VOCAB_FILE = "vocab.txt"
JOB_FILE = "job.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.txt"
STATE_FILE = "train_state.json"  # resume state of a training checkpoint
OPTIMIZER_FILE = "optimizer.npz"  # optimizer slots of a training checkpoint
REQUIRED = (SPEC_FILE, WEIGHTS_FILE, VOCAB_FILE)
RESUME_FILES = (STATE_FILE, OPTIMIZER_FILE)


class ModelDirError(ValueError):
    """A model directory that is incomplete, damaged or inconsistent; names the file."""


def save(path: str | Path, model, spec: ModelSpec, vocab: Vocab, job: dict | None = None) -> Path:
    """Write weights, spec (encoder config, labels, head settings), vocab and job config."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(path / WEIGHTS_FILE))
    spec.save(path / SPEC_FILE)
    vocab.save(path / VOCAB_FILE)
    if job is not None:
        (path / JOB_FILE).write_text(
            json.dumps(paths.scrub(job), ensure_ascii=False, indent=2, default=str), encoding="utf-8"
        )
    return path


def new_model(spec: ModelSpec, seed: int = 0, checkpoint: str | None = None):
    """A task model ready to train: built from ``spec``, the encoder initialised from a TF
    ``checkpoint`` or at random (BERT's truncated normal, seeded). Call under a distribution
    strategy's scope and a dtype policy as needed."""
    from albert_ray.model.encoder import initialize_encoder

    model = build_task_model(spec)
    if checkpoint:
        from albert_ray.model.checkpoint import load_checkpoint

        load_checkpoint(model, spec.encoder, checkpoint)
    else:
        initialize_encoder(model, spec.encoder, seed=seed)
    return model


def create(
    path: str | Path, spec: ModelSpec, vocab: Vocab, seed: int = 0, checkpoint: str | None = None
) -> Path:
    """A fresh (untrained) model directory: :func:`new_model`, then :func:`save`."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    return save(path, new_model(spec, seed, checkpoint), spec, vocab)


def check(path: str | Path) -> tuple[ModelSpec, Vocab]:
    """Check a model directory without TensorFlow and return its spec and vocabulary.

    Checks that the files are present and readable, ``model.json`` is complete and valid, the
    vocabulary fits the encoder's ``vocab_size``, and the weights file is a readable HDF5 file
    holding the token embedding and the head the spec describes.

    Raises:
        ModelDirError: one line naming the file and the problem.
    """
    local = local_copy(path)
    if local == Path(path):
        return _check_local(local)
    try:
        return _check_local(local)
    except ModelDirError as exc:  # name the location the user gave, not the cache
        raise ModelDirError(str(exc).replace(str(local), paths.without_credentials(path))) from None


def _check_local(path: Path) -> tuple[ModelSpec, Vocab]:
    if not path.is_dir():
        raise ModelDirError(f"model directory not found: {path}{where(path)}")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise ModelDirError(
            f"{path} is not a model directory: {', '.join(missing)} missing "
            f"(a model directory is written by 'albert-ray train')"
        )
    try:
        spec = ModelSpec.load(path / SPEC_FILE)
        task_for(spec)
    except (OSError, ValueError) as exc:
        message = str(exc)
        raise ModelDirError(
            message if message.startswith(str(path)) else f"{path / SPEC_FILE}: {message}"
        ) from None
    vocab = _read_vocab(path / VOCAB_FILE)
    if len(vocab) > spec.encoder.vocab_size:
        raise ModelDirError(
            f"{path / VOCAB_FILE} has {len(vocab)} tokens but the encoder in {path / SPEC_FILE} has "
            f"vocab_size={spec.encoder.vocab_size}: token ids beyond it have no embedding; "
            f"use the vocab.txt the model was trained with"
        )
    _check_weights(path / WEIGHTS_FILE, spec, len(vocab))
    return spec, vocab


def _read_vocab(file: Path) -> Vocab:
    try:
        vocab = Vocab.from_file(file)
    except UnicodeDecodeError as exc:
        raise ModelDirError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{file}: {exc}") from None
    if len(vocab) == 0:
        raise ModelDirError(f"{file}: empty vocabulary")
    return vocab


def weight_shapes(file: Path) -> list[tuple[int, ...]]:
    """Shapes of every array in a Keras ``.weights.h5`` file (h5py, no TensorFlow).

    Raises:
        ModelDirError: the file is not readable HDF5 (empty, truncated, another format).
    """

    shapes: list[tuple[int, ...]] = []
    try:
        with h5py.File(file, "r") as f:
            f.visititems(
                lambda _, obj: shapes.append(tuple(obj.shape)) if isinstance(obj, h5py.Dataset) else None
            )
    except (OSError, ValueError) as exc:  # h5py reports truncation and bad signatures as OSError
        reason = str(exc).split("(")[0].strip().rstrip(",") or type(exc).__name__
        raise ModelDirError(
            f"{file}: not a readable weights file ({reason}; {file.stat().st_size} bytes); it is "
            f"damaged or truncated: copy it again from the training output"
        ) from None
    if not shapes:
        raise ModelDirError(f"{file}: holds no weights")
    return shapes


def _check_weights(file: Path, spec: ModelSpec, vocab_len: int) -> None:
    shapes = weight_shapes(file)
    enc = spec.encoder
    embedding = (enc.vocab_size, enc.embedding_size or enc.hidden_size)
    if embedding not in shapes:
        rows = sorted({s[0] for s in shapes if len(s) == 2 and s[1] == embedding[1] and s[0] >= vocab_len})
        found = f"token embeddings of {rows[-1]} rows" if rows else "no matching token embedding"
        raise ModelDirError(
            f"{file}: {found}, but {file.parent / SPEC_FILE} describes an encoder with "
            f"vocab_size={enc.vocab_size} and width {embedding[1]}: the weights belong to another "
            f"model"
        )
    for what, shape in task_for(spec).head_shapes(spec):
        if shape not in shapes:
            raise ModelDirError(
                f"{file}: no {what} of shape {list(shape)}, which {file.parent / SPEC_FILE} "
                f"(task {spec.task}, {len(spec.labels)} labels) needs: the weights were saved for "
                f"another task or label set"
            )


def load(path: str | Path, precision: str = "float32"):
    """Check and load a model directory: ``(model, spec, vocab)``.

    ``precision`` is a resolved one (``float32``, ``bfloat16``, ``float16``).

    Raises:
        ModelDirError: one line naming the file and the problem.
    """
    from albert_ray.model.encoder import dtype_policy

    spec, vocab = check(path)
    path = local_copy(path)
    with dtype_policy(PRECISION_POLICIES[precision]):
        model = build_task_model(spec)
    try:
        model.load_weights(str(path / WEIGHTS_FILE))
    except (OSError, ValueError) as exc:
        raise ModelDirError(
            f"{path / WEIGHTS_FILE}: does not fit the model {path / SPEC_FILE} describes ({first_line(exc)})"
        ) from None
    return model, spec, vocab


def write_resume_state(folder: str | Path, state_json: str, optimizer_values: list[np.ndarray]) -> None:
    """The resume state of a training checkpoint: the loop's state (JSON) and the optimizer's
    variables in order, beside the weights."""
    Path(folder, STATE_FILE).write_text(state_json)
    np.savez(Path(folder, OPTIMIZER_FILE), **{f"v{i}": value for i, value in enumerate(optimizer_values)})


def read_resume_state(folder: str | Path) -> tuple[str, list[np.ndarray] | None]:
    """The loop's state (JSON text) and the optimizer's variables (None when the checkpoint has
    none, as a published model directory)."""
    text = Path(folder, STATE_FILE).read_text()
    if not Path(folder, OPTIMIZER_FILE).exists():
        return text, None
    with np.load(Path(folder, OPTIMIZER_FILE)) as saved:
        return text, [saved[f"v{i}"] for i in range(len(saved.files))]


def drop_resume_state(path: str | Path) -> None:
    """Remove what only a training checkpoint needs (the optimizer slots)."""
    (Path(path) / OPTIMIZER_FILE).unlink(missing_ok=True)


# ---- locations: a model directory anywhere, and on every node ------------------------------------
def local_copy(location: str | Path) -> Path:
    """A local folder holding the model directory at ``location`` (:func:`paths.local_folder`).

    Raises:
        ModelDirError: nothing at the URI, or the store refuses to list or serve it.
    """
    try:
        return paths.local_folder(location)
    except FileNotFoundError:
        raise ModelDirError(f"model directory not found: {paths.without_credentials(location)}") from None
    except (OSError, ValueError) as exc:
        raise ModelDirError(
            f"model directory {paths.without_credentials(location)} cannot be read: {first_line(exc)}"
        ) from None


def publish(local: str | Path, location: str | Path) -> str:
    """Write the finished model directory ``local`` to ``location`` (a URI or another folder);
    the location as shown (no credentials)."""
    paths.publish_dir(local, location)
    return paths.without_credentials(location)


def pack(location: str | Path) -> dict[str, bytes]:
    """The files a model needs to load (``REQUIRED``), as bytes: put them into Ray's object store
    once and every node's processes :func:`unpack` them, whatever disk they see."""
    local = local_copy(location)
    return {name: (local / name).read_bytes() for name in REQUIRED}


def unpack(files: dict[str, bytes], folder: str | Path | None = None) -> Path:
    """Write packed model files into ``folder`` (a new temporary folder by default); the folder."""
    folder = Path(folder or tempfile.mkdtemp(prefix="albert-ray-model-"))
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if name not in REQUIRED:
            raise ModelDirError(f"unexpected model file {name!r} in a packed model")
        (folder / name).write_bytes(data)
    return folder


def checksum(files: dict[str, bytes]) -> str:
    """sha256 over a packed model's files (names and bytes), short: which model a run used."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name])
    return digest.hexdigest()[:16]
