"""The encoder that ships with the project: a small Chinese ALBERT pre-trained once here.

It lives in ``albert_ray/model/bundled_encoder/`` in the brightmart layout (``model.ckpt.*``,
``albert_config.json``, ``vocab.txt``) plus ``pretrain.json`` (the recipe, the corpus list with
sizes and licences, steps, held-out MLM loss and accuracy). Its tensors are stored as float16 to
keep the repository small; :func:`albert_ray.model.checkpoint.load_checkpoint` restores them as
float32. ``model.init: bundled`` (the default of fine-tuning) starts from it; each process resolves
the folder in its own install, so Ray workers on other nodes find their own copy.

``scripts/bundled_encoder.py`` builds it: the corpus, the pre-training, then :func:`pack`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

BUNDLED_DIR = Path(__file__).resolve().with_name("bundled_encoder")
STORED_DTYPE = np.float16
CONFIG_FILE, VOCAB_FILE, RECORD_FILE = "albert_config.json", "vocab.txt", "pretrain.json"
CHECKPOINT_PREFIX = "model.ckpt"


class BundledEncoderMissing(FileNotFoundError):
    pass


def bundled_dir() -> Path:
    """The bundled encoder's folder in this install.

    Raises:
        BundledEncoderMissing: the install lacks it (a one-line reason and the fix).
    """
    if not (BUNDLED_DIR / f"{CHECKPOINT_PREFIX}.index").is_file():
        raise BundledEncoderMissing(
            f"the bundled encoder is missing from this install ({BUNDLED_DIR}); reinstall albert-ray, "
            f"or set model.init=none (random start) or model.init=checkpoint with model.checkpoint=DIR"
        )
    return BUNDLED_DIR


def record() -> dict:
    """The bundled encoder's ``pretrain.json``: recipe, corpus, steps, held-out MLM numbers."""
    return json.loads((bundled_dir() / RECORD_FILE).read_text(encoding="utf-8"))


def pack(
    pretrained: str | Path,
    corpus_record: str | Path,
    out: str | Path = BUNDLED_DIR,
    recipe: dict | None = None,
) -> dict:
    """Write a pre-trained folder (``albert-ray pretrain``'s output) as the bundled encoder: every
    float tensor as float16 under its own name, the config, the vocabulary and ``pretrain.json``
    with the last epoch's numbers, the corpus record and ``recipe`` (the config and the machine)
    added. Returns what it wrote (sizes in bytes)."""
    import tensorflow as tf

    from albert_ray.model.checkpoint import resolve_checkpoint, write_variables

    pretrained, out = Path(pretrained), Path(out)
    reader = tf.train.load_checkpoint(resolve_checkpoint(pretrained))
    variables = {}
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        variables[name] = value.astype(STORED_DTYPE) if np.issubdtype(value.dtype, np.floating) else value
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_variables(out / CHECKPOINT_PREFIX, variables)
    for name in (CONFIG_FILE, VOCAB_FILE):
        shutil.copyfile(pretrained / name, out / name)
    summary = json.loads((pretrained / RECORD_FILE).read_text(encoding="utf-8"))
    summary.pop("pretrained_dir", None)
    last = summary["history"][-1]
    summary.update(
        steps=last["steps"],
        heldout_loss=last["heldout_loss"],
        heldout_accuracy=last["heldout_accuracy"],
        minutes=round(summary.get("seconds", 0) / 60, 1),
        recipe=recipe or {},
        stored_dtype=np.dtype(STORED_DTYPE).name,
        corpus_record=json.loads(Path(corpus_record).read_text(encoding="utf-8")),
    )
    (out / RECORD_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    return {"folder": str(out), "tensors": len(variables), "bytes": sum(sizes.values()), "files": sizes}
