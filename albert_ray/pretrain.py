"""Masked-LM pre-training (and domain adaptation) of any encoder layout with Ray Train.

keras-bert does not pre-train (its issue #219) and nothing maintained does it for these
layouts, hence this module: the corpus is read by the labeling read path (any format, path, glob
or URI; bad rows skipped and counted), tokenized and packed into ``[CLS] ... [SEP]`` sequences
of ``max_len`` in Ray Data tasks; workers mask dynamically per epoch (15 %, 80/10/10), compute
logits at the masked positions only (the 21,128-word output layer would otherwise dominate),
and write the encoder in its own published checkpoint layout with the MLM head beside it
(``cls/predictions/...``), its config JSON and ``vocab.txt`` — a directory that fine-tuning takes
with ``model.init: checkpoint`` and ``model.checkpoint: <dir>`` alone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from albert_ray.batching import pad_batch
from albert_ray.config import EncoderConfig, check_fits, checkpoint_folder_files
from albert_ray.progress import StepBar, bars_wanted
from albert_ray.tokenization import CLS, MASK, PAD, SEP, UNK, CharTokenizer, Vocab

log = logging.getLogger(__name__)

HEAD_PREFIX = "cls/predictions"


# ---- configuration -------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainModel:
    encoder_config: str | None = None    # default: the checkpoint's own, else data/albert_config_sample.json
    vocab: str | None = None             # a vocab.txt; default: the checkpoint's; "auto": the corpus' characters
    checkpoint: str | None = None        # continue from this checkpoint (domain adaptation)
    max_len: int = 128
    init_range: float | None = None      # std of a random start; default: init_std(encoder), see there


def init_std(encoder: EncoderConfig, init_range: float | None = None) -> float:
    """The standard deviation of a random start: ``init_range`` if given, else
    ``max(initializer_range, 1/sqrt(hidden_size))``.

    The published 0.02 is tuned for H >= 768. At H=128 it starves the signal: a block's kernels
    scale their input by 0.02 * sqrt(128) = 0.23, the factorised token embedding reaches the
    residual stream at 0.02 * 0.02 * sqrt(64) = 0.003 against 0.02 for the position embedding,
    and masked-LM training sits on the unigram plateau. Measured on the sample encoder (600 steps,
    batch 32, 1.6M characters): held-out masked-token accuracy 0.054 at 0.02 (the unigram
    baseline), 0.143 at 0.1; 0.02 needed 5,300 steps to reach 0.132.
    """
    return init_range if init_range is not None else max(encoder.initializer_range, encoder.hidden_size ** -0.5)


@dataclass(frozen=True)
class PretrainTrain:
    epochs: int = 1
    batch_size: int = 32                 # sequences per worker and step
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    mask_rate: float = 0.15
    whole_word_masking: bool = False     # the corpus is word-segmented with spaces: mask whole words
    sentence_order: bool = False         # ALBERT's sentence-order prediction beside the masked LM
    max_steps: int = 0                   # 0: no limit
    max_minutes: float = 0.0             # wall-clock budget of the training loop; 0: none
    heldout_permille: int = 10           # sequences kept out of training to report MLM loss / accuracy
    precision: str = "float32"           # float32 | mixed_float16 | mixed_bfloat16
    xla: bool = False                    # jit-compile the training step (XLA)
    seed: int = 42
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    tf_threads: int = 0
    log_every: int = 50
    max_failures: int = 1
    checkpoint_every_steps: int = 0      # also checkpoint within epochs: a killed worker loses at most this many


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
    def pretrained_dir(self) -> Path:
        return Path(self.output_dir) / self.name / "pretrained"


def load_pretrain_config(path: str | None, overrides: list[str] | None = None,
                         inputs: list[str] | None = None) -> PretrainConfig:
    """A :class:`PretrainConfig` from YAML and dotted overrides (``--input`` replaces ``inputs``).

    Raises:
        FileNotFoundError, ValueError: one line naming the field.
    """
    from albert_ray.typedconfig import apply_overrides, build, read_yaml

    data = apply_overrides(read_yaml(path, "pretrain config") if path else {}, list(overrides or []))
    if inputs:
        data["inputs"] = list(inputs)
    cfg = build(PretrainConfig, data)
    t = cfg.train
    for key, value in (("train.epochs", t.epochs), ("train.batch_size", t.batch_size), ("model.max_len", cfg.model.max_len),
                       ("train.num_workers", t.num_workers), ("train.learning_rate", t.learning_rate)):
        if value <= 0:
            raise ValueError(f"{key}={value!r}: must be > 0")
    if cfg.model.init_range is not None and cfg.model.init_range <= 0:
        raise ValueError(f"model.init_range={cfg.model.init_range!r}: must be > 0")
    if not 0 < t.mask_rate < 1:
        raise ValueError(f"train.mask_rate={t.mask_rate!r}: must be in (0, 1)")
    if t.precision not in ("float32", "mixed_float16", "mixed_bfloat16"):
        raise ValueError(f"train.precision={t.precision!r}: must be one of ['float32', 'mixed_float16', 'mixed_bfloat16']")
    if not cfg.inputs:
        raise ValueError("inputs: give at least one file, directory or glob (or --input)")
    return cfg


def resolve_model_files(cfg: PretrainConfig) -> tuple[EncoderConfig, Vocab]:
    """The encoder config and vocabulary: given, else the checkpoint directory's own."""
    m = cfg.model
    own_config, own_vocab = checkpoint_folder_files(m.checkpoint) if m.checkpoint else (None, None)
    config_file = m.encoder_config or own_config or "data/albert_config_sample.json"
    vocab_file = m.vocab or own_vocab
    if vocab_file is None:
        raise ValueError("model.vocab: give a vocab.txt (the brightmart one), 'auto' (the corpus' characters) or a "
                         "model.checkpoint directory that holds one")
    encoder = EncoderConfig.from_json_file(config_file)
    if vocab_file == "auto":
        if m.checkpoint:
            raise ValueError("model.vocab: a checkpoint needs its own vocab.txt, not 'auto'")
        from dataclasses import replace

        from albert_ray.tokenization import build_char_vocab

        vocab = build_char_vocab(corpus_texts(cfg))
        log.info("vocab: auto -> %d characters from the corpus (vocab_size of %s overridden)", len(vocab), config_file)
        encoder = replace(encoder, vocab_size=len(vocab))
    else:
        vocab = Vocab.from_file(vocab_file)
    check_fits(encoder, m.max_len, len(vocab), vocab_file)
    return encoder, vocab


# ---- data: packing and masking -------------------------------------------------------------------
def read_tasks(cfg: PretrainConfig) -> list[dict]:
    """One read task per input file (the whole file as one unit: pre-training keeps no unit records)."""
    from albert_ray.corpus import expand_inputs, plan_units

    return [{"path": u.path, "fmt": u.fmt,
             "units": [{"uid": u.uid, "start": u.start, "stop": u.stop, "todo": True, "resume": None}]}
            for u in plan_units(expand_inputs(cfg.inputs, cfg.format), 1 << 62)]


def task_texts(task: dict, cfg: PretrainConfig):
    """The readable texts of one read task, in blocks (bad rows are skipped)."""
    import pyarrow.compute as pc

    from albert_ray.corpus import ReadOptions, read_file

    for table in read_file(task, ReadOptions(cfg.format, cfg.text_field, None, 1_000_000)):
        good = pc.and_(pc.is_null(table.column("meta")), pc.is_null(table.column("reason")))
        yield table.filter(good).column("text").to_pylist()


def corpus_texts(cfg: PretrainConfig):
    """Every readable text of the inputs, streamed."""
    for task in read_tasks(cfg):
        for texts in task_texts(task, cfg):
            yield from texts


WORD_START = 1 << 30  # flag bit on a token id: a word begins here (whole-word masking)


def pack_texts(texts, tokenizer: CharTokenizer, max_len: int, words: bool = False,
               pairs: bool = False) -> list[list[int]]:
    """Token ids of the texts, concatenated and cut into ``[CLS] body [SEP]`` sequences of at
    most ``max_len`` (short sentences share a sequence: no compute spent on padding).

    ``words``: the texts are word-segmented with spaces (``北京 天安门``); the first token of
    each word carries :data:`WORD_START` (a bit no vocabulary reaches), so whole-word masking
    needs no second column. :func:`mask_batch` strips it.

    ``pairs`` (sentence-order prediction): ``[CLS] A [SEP] B [SEP]``, A and B consecutive text cut
    at the text boundary nearest the middle of the sequence (at the middle when it holds none);
    a sequence of one token has no B.
    """
    body = max_len - (3 if pairs else 2)
    stream: list[int] = []
    boundaries: set[int] = set()
    for text in texts:
        enc = tokenizer.encode(text)
        ids = enc.token_ids[1:-1]
        if words:
            chars = enc.char_index[1:-1]
            ids = [t | WORD_START if j == 0 or chars[j] != chars[j - 1] + 1 else t for j, t in enumerate(ids)]
        boundaries.add(len(stream))
        stream += ids
    cls, sep = tokenizer.vocab.cls_id, tokenizer.vocab.sep_id
    out = []
    for i in range(0, len(stream), body):
        chunk = stream[i : i + body]
        if not pairs or len(chunk) < 2:
            out.append([cls] + chunk + [sep])
            continue
        inner = [b - i for b in boundaries if i < b < i + len(chunk)]
        cut = min(inner, key=lambda b: abs(b - len(chunk) / 2)) if inner else len(chunk) // 2
        out.append([cls] + chunk[:cut] + [sep] + chunk[cut:] + [sep])
    return out


def order_batch(ids: np.ndarray, rng: np.random.Generator, vocab: Vocab) -> tuple:
    """Sentence-order prediction on a padded batch of ``[CLS] A [SEP] B [SEP]`` rows: half the
    rows (drawn anew each epoch) become ``[CLS] B [SEP] A [SEP]``.

    Returns:
        ``(ids, segments, labels, weights)``: segment 1 from B (or the swapped A) on; label 1 when
        swapped; weight 0 for rows with one segment.
    """
    ids = ids.copy()
    segments = np.zeros_like(ids)
    labels = np.zeros(len(ids), np.int32)
    weights = np.zeros(len(ids), np.float32)
    sep = vocab.sep_id
    for row in range(len(ids)):
        seps = np.flatnonzero(ids[row] == sep)
        if len(seps) < 2:
            continue
        first, last = seps[0], seps[1]
        a, b = ids[row, 1:first].copy(), ids[row, first + 1 : last].copy()
        if rng.random() < 0.5:
            a, b = b, a
            labels[row] = 1
        ids[row, 1 : 1 + len(a)], ids[row, 1 + len(a)] = a, sep
        ids[row, 2 + len(a) : 2 + len(a) + len(b)] = b
        segments[row, 2 + len(a) : last + 1] = 1
        weights[row] = 1.0
    return ids, segments, labels, weights


def make_batch(rows, rng: np.random.Generator, vocab: Vocab, t: "PretrainTrain") -> tuple:
    """A training batch: padded, sentence order drawn (if on), masked; the step's inputs
    ``(ids, segments, positions, labels, weights, order_labels, order_weights)``."""
    batch = pad_batch(rows)
    if t.sentence_order:
        batch, segments, order_labels, order_weights = order_batch(batch, rng, vocab)
    else:
        segments, order_labels, order_weights = np.zeros_like(batch), np.zeros(len(batch), np.int32), \
            np.zeros(len(batch), np.float32)
    ids, pos, labels, weights = mask_batch(batch, rng, vocab, t.mask_rate, t.whole_word_masking)
    return ids, segments, pos, labels, weights, order_labels, order_weights


def is_heldout(ids, permille: int) -> bool:
    """A fixed, content-based slice of the sequences kept out of training."""
    return zlib.crc32(np.asarray(ids, dtype=np.int32).tobytes()) % 1000 < permille


def mask_batch(ids: np.ndarray, rng: np.random.Generator, vocab: Vocab, rate: float = 0.15,
               whole_words: bool = False) -> tuple:
    """Dynamic masking of a padded batch: ``rate`` of each row's ordinary tokens (never
    ``[PAD]``/``[CLS]``/``[SEP]``/``[MASK]``) become prediction targets, of which 80 % are
    replaced by ``[MASK]``, 10 % by a random ordinary token and 10 % kept. ``whole_words``: whole
    words (marked by :data:`WORD_START`, see :func:`pack_texts`) are chosen until the rate is
    reached, every token of a chosen word a target (the 80/10/10 draw stays per token, as BERT's).

    Returns:
        ``(inputs, positions, labels, weights)``: ``positions``/``labels``/``weights`` are
        ``(B, P)`` with ``P = ceil(rate * L)``; padding slots have weight 0.
    """
    starts = (ids & WORD_START) != 0
    ids = ids & ~WORD_START
    special = np.array([vocab.index[t] for t in (PAD, CLS, SEP, MASK, UNK) if t in vocab.index])
    ordinary = np.setdiff1d(np.arange(len(vocab)), special)
    b, length = ids.shape
    p = max(1, math.ceil(rate * length))
    inputs = ids.copy()
    positions = np.zeros((b, p), np.int32)
    labels = np.zeros((b, p), np.int32)
    weights = np.zeros((b, p), np.float32)
    mask_id = vocab.index[MASK]
    for row in range(b):
        candidates = np.flatnonzero(~np.isin(ids[row], special))
        if not len(candidates):
            continue
        k = min(p, max(1, int(round(rate * len(candidates)))))
        if whole_words:
            chosen = _whole_words(candidates, starts[row], k, rng)
            k = len(chosen)
        else:
            chosen = np.sort(rng.choice(candidates, k, replace=False))
        r = rng.random(k)
        positions[row, :k], labels[row, :k], weights[row, :k] = chosen, ids[row, chosen], 1.0
        inputs[row, chosen[r < 0.8]] = mask_id
        swap = chosen[(r >= 0.8) & (r < 0.9)]
        inputs[row, swap] = rng.choice(ordinary, len(swap))
    return inputs, positions, labels, weights


def _whole_words(candidates: np.ndarray, starts: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of whole words, in random word order, while they fit in ``k`` tokens."""
    cut = np.flatnonzero(starts[candidates] | (np.diff(candidates, prepend=-2) != 1))
    words = np.split(candidates, cut[1:]) if len(cut) else [candidates]
    chosen: list[int] = []
    for w in rng.permutation(len(words)):
        if len(chosen) + len(words[w]) <= k:
            chosen += words[w].tolist()
        if len(chosen) == k:
            break
    return np.sort(np.array(chosen or words[int(rng.integers(len(words)))][:k].tolist(), dtype=np.int64))


def _read_and_pack(batch, cfg: PretrainConfig, vocab: Vocab):
    """Ray Data UDF: a file's read task in, packed sequences out."""
    import pyarrow as pa

    tokenizer = CharTokenizer(vocab)
    for task in batch["task"]:
        for texts in task_texts(json.loads(task), cfg):
            seqs = pack_texts(texts, tokenizer, cfg.model.max_len, cfg.train.whole_word_masking, cfg.train.sentence_order)
            if seqs:
                yield pa.table({"token_ids": seqs,
                                "heldout": [is_heldout(s, cfg.train.heldout_permille) for s in seqs]})


def sequences_dataset(cfg: PretrainConfig, vocab: Vocab):
    """A Ray dataset of packed sequences ``{"token_ids", "heldout"}``, read one task per file."""
    import ray

    tasks = read_tasks(cfg)
    log.info("pre-training on %d files", len(tasks))
    return ray.data.from_items([{"task": json.dumps(t)} for t in tasks]).map_batches(
        _read_and_pack, fn_kwargs={"cfg": cfg, "vocab": vocab}, batch_size=1, num_cpus=READ_TASK_CPUS)


# ---- the model -----------------------------------------------------------------------------------
def build_mlm_model(config: EncoderConfig, sentence_order: bool = False):
    """``[token_ids, segment_ids, masked_positions] -> logits (B, P, vocab)`` (float32): the
    encoder and an MLM head whose output layer is the token embedding, transposed (as in BERT and
    ALBERT), evaluated at the masked positions only. ``sentence_order``: also ``(B, 2)`` logits
    of ALBERT's sentence-order head (the pooler, ``tanh`` of a dense layer on ``[CLS]``, then a
    dense layer), as a second output."""
    from tensorflow import keras

    from albert_ray.encoder import build_encoder

    encoder = build_encoder(config, name="encoder")
    positions = keras.layers.Input((None,), dtype="int32", name="Input-Masked-Positions")
    logits = MaskedLMHead(config, encoder, name="MLM-Head")([encoder.outputs[0], positions])
    if sentence_order:
        pooled = keras.layers.Dense(config.hidden_size, activation="tanh", name="SOP-Pooler")(encoder.outputs[1])
        order = keras.layers.Dense(2, name="SOP-Output", dtype="float32")(pooled)
        return keras.Model(encoder.inputs + [positions], [logits, order], name="mlm_sop")
    return keras.Model(encoder.inputs + [positions], logits, name="mlm")


def head_variables(model) -> dict:
    """The pre-training heads' variables under their published names: the MLM head, and the
    pooler and sentence-order output when the model has them (kernels of ``output_weights``
    are stored ``[2, H]``, as in BERT's checkpoints)."""
    out = dict(model.get_layer("MLM-Head").variables_by_name())
    names = {layer.name for layer in model.layers}
    if "SOP-Pooler" in names:
        pooler, order = model.get_layer("SOP-Pooler"), model.get_layer("SOP-Output")
        out.update({"bert/pooler/dense/kernel": pooler.kernel, "bert/pooler/dense/bias": pooler.bias,
                    "cls/seq_relationship/output_weights": order.kernel, "cls/seq_relationship/output_bias": order.bias})
    return out


_TRANSPOSED = {"cls/seq_relationship/output_weights"}


def MaskedLMHead(config: EncoderConfig, encoder, name: str):  # noqa: N802  (a layer factory)
    """The MLM head layer: transform (dense + activation + LayerNorm) at the width the layout's
    published head has, then logits against the token embedding (brightmart projects back
    through ``word_embeddings_2`` first), plus ``output_bias``."""
    import tensorflow as tf
    from tensorflow import keras

    from albert_ray import fused
    from albert_ray.encoder import LN_EPSILON, activation_for

    width = config.embedding_size if config.layout == "albert_google" else config.hidden_size

    class _Head(keras.layers.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight(name="transform_kernel", shape=(config.hidden_size, width))
            self.bias = self.add_weight(name="transform_bias", shape=(width,), initializer="zeros")
            def float32(name, size, initializer):  # read in float32 under a mixed policy too
                return self.add_weight(name=name, shape=(size,), initializer=initializer, experimental_autocast=False)

            self.gamma, self.beta = float32("gamma", width, "ones"), float32("beta", width, "zeros")
            self.output_bias = float32("output_bias", config.vocab_size, "zeros")
            self.act = activation_for(config)

        # the encoder's own variables, reached through functions so Keras does not track them twice
        @staticmethod
        def embedding():
            return encoder.get_layer("Embedding-Token").weights[0]

        @staticmethod
        def projection():
            return encoder.get_layer("Embedding-Token-Projection").weights[0]

        def call(self, inputs):
            # 2-D matmuls on the (B * P) gathered rows: against a 3-D input the tied embedding's
            # gradient would be a (B, vocab, E) batch summed afterwards
            sequence, positions = inputs
            compute = self.compute_dtype                                            # bfloat16 under mixed_bfloat16
            x = tf.gather(sequence, positions, batch_dims=1)                       # (B, P, H)
            x = tf.reshape(tf.cast(x, compute), [-1, config.hidden_size])         # (B * P, H)
            x = self.act(tf.nn.bias_add(tf.matmul(x, tf.cast(self.kernel, compute)), tf.cast(self.bias, compute)))
            x = tf.cast(fused.layer_norm(x, self.gamma, self.beta, LN_EPSILON), compute)  # LayerNorm in float32
            if config.layout == "albert_brightmart":
                x = tf.matmul(x, tf.cast(self.projection(), compute), transpose_b=True)  # H -> E
            logits = tf.matmul(x, tf.cast(self.embedding(), compute), transpose_b=True)
            logits = fused.logits_with_bias(logits, self.output_bias)  # float32: softmax and loss
            return tf.reshape(logits, tf.concat([tf.shape(positions), [config.vocab_size]], axis=0))

        def variables_by_name(self) -> dict:
            p = HEAD_PREFIX
            return {f"{p}/transform/dense/kernel": self.kernel, f"{p}/transform/dense/bias": self.bias,
                    f"{p}/transform/LayerNorm/gamma": self.gamma, f"{p}/transform/LayerNorm/beta": self.beta,
                    f"{p}/output_bias": self.output_bias}

    return _Head(name=name, autocast=False)  # the global policy's compute dtype; variables float32


def save_pretrained(folder: str | Path, model, config: EncoderConfig, vocab: Vocab, summary: dict | None = None) -> Path:
    """The encoder in its layout's published checkpoint names, the MLM head under
    ``cls/predictions/...`` (and the sentence-order head under ``bert/pooler`` and
    ``cls/seq_relationship``), the config JSON and ``vocab.txt``."""
    from albert_ray.checkpoint import encoder_variables, write_variables

    folder = Path(folder)
    variables = encoder_variables(model, config)
    variables.update({k: v.numpy().T if k in _TRANSPOSED else v.numpy() for k, v in head_variables(model).items()})
    write_variables(folder / "model.ckpt", variables)
    name = "bert_config.json" if config.layout == "bert" else "albert_config.json"
    (folder / name).write_text(json.dumps(config.to_dict(), indent=2))
    vocab.save(folder / "vocab.txt")
    if summary is not None:
        (folder / "pretrain.json").write_text(json.dumps(summary, indent=2))
    return folder


def load_head(model, checkpoint: str) -> bool:
    """The pre-training heads from a checkpoint that has them (continued pre-training); False if
    it lacks one (that head starts new)."""
    import tensorflow as tf

    from albert_ray.checkpoint import resolve_checkpoint

    reader = tf.train.load_checkpoint(resolve_checkpoint(checkpoint))
    names = reader.get_variable_to_shape_map()
    head = head_variables(model)
    for n, var in head.items():
        if n in names:
            value = reader.get_tensor(n)
            var.assign(value.T if n in _TRANSPOSED else value)
    return all(n in names for n in head)


# ---- the worker loop -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainWorker:
    cfg: PretrainConfig
    encoder: EncoderConfig
    vocab: Vocab
    tf_threads: int = 0
    rows: list | None = None          # in-process runs: the sequences
    local_output: str | None = None
    progress_bar: bool = False        # the driver writes to a terminal: a step bar on rank 0


def _order_loss(logits, labels, weights):
    """Sentence-order cross-entropy and correct predictions, weighted (rows with one segment: 0)."""
    import tensorflow as tf

    ce = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    correct = tf.cast(tf.equal(tf.cast(tf.argmax(logits, -1), tf.int32), labels), tf.float32)
    return tf.reduce_sum(ce * weights), tf.reduce_sum(correct * weights), tf.reduce_sum(weights)


def _masked_loss(logits, labels, weights):
    """Masked-LM cross-entropy and correct predictions, weighted (padding slots: 0)."""
    import tensorflow as tf

    from albert_ray import fused

    ce = fused.sparse_cross_entropy(labels, logits)
    correct = tf.cast(tf.equal(tf.cast(tf.argmax(logits, -1), tf.int32), labels), tf.float32)  # pruned in training
    return tf.reduce_sum(ce * weights), tf.reduce_sum(correct * weights), tf.reduce_sum(weights)


def pretrain_loop_per_worker(config: dict) -> None:
    """Ray Train worker (also in-process): build, restore, train epochs within the budget, report."""
    from tensorflow import keras

    from albert_ray.runtime import configure_tf

    w: PretrainWorker = config["worker"]
    configure_tf(w.tf_threads)
    cfg, t = w.cfg, w.cfg.train
    ctx = _pretrain_context(w)
    heldout = [r for r in ctx.rows if is_heldout(r, t.heldout_permille)]
    train_rows = [r for r in ctx.rows if not is_heldout(r, t.heldout_permille)]
    keras.utils.set_random_seed(t.seed)
    steps_per_epoch = _min_across(ctx.strategy, len(train_rows) // t.batch_size, ctx.world)
    cap = max(1, steps_per_epoch * t.epochs)
    cap = min(cap, t.max_steps) if t.max_steps else cap
    model, optimizer, step, budget = _build_pretraining(w, ctx.strategy, cap)
    state = _restore_pretraining(model, optimizer, w, ctx.resume)
    if ctx.rank == 0:
        log.info("pre-training %s: %d sequences (%d held out), %d workers x batch %d, %d steps/epoch, at most %d steps"
                 "%s, %s", cfg.name, len(ctx.rows), len(heldout), ctx.world, t.batch_size, steps_per_epoch, cap,
                 f", {t.max_minutes:g} min" if t.max_minutes else "", t.precision)

    def checkpoint(folder):
        from albert_ray.worker import optimizer_state

        save_pretrained(folder, model, w.encoder, w.vocab, {"history": state.history, "resumes": state.resumes})
        Path(folder, "train_state.json").write_text(state.to_json())
        np.savez(Path(folder, "optimizer.npz"), **{f"v{i}": v.numpy() for i, v in enumerate(optimizer_state(optimizer))})

    def midway(epoch: int, batch: int) -> None:  # a checkpoint within the epoch, resumed at ``batch``
        state.epoch, state.batch = epoch, batch
        ctx.reporter.report({"epoch": epoch + 1, "steps": int(optimizer.iterations.numpy()), "final": False}, checkpoint)

    for epoch in range(state.epoch, t.epochs):
        first = state.batch if epoch == state.epoch else 0
        metrics = _pretrain_epoch(step, optimizer, train_rows, w, ctx.rank, epoch, (first, steps_per_epoch), budget,
                                  lambda batch: midway(epoch, batch))
        metrics.update(evaluate_mlm(model, heldout, w.vocab, t))
        state.history.append(metrics)
        state.epoch, state.batch = epoch + 1, 0
        if ctx.rank == 0:
            order = metrics.get("heldout_order_accuracy")
            log.info("epoch %d: loss %.4f, held-out MLM loss %.4f, masked-token accuracy %.4f%s, %.1f sequences/s",
                     epoch + 1, metrics["train_loss"], metrics["heldout_loss"], metrics["heldout_accuracy"],
                     "" if order is None else f", sentence-order accuracy {order:.4f}", metrics["sequences_per_second"])
        ctx.reporter.report({**metrics, "final": budget.hit or epoch + 1 == t.epochs}, checkpoint)
        if budget.hit:
            break


class Budget:
    """The step cap and the wall-clock budget. Steps are timed from step 10 (after tracing and
    warm-up); every 50 steps the schedule's total (a ``tf.Variable``) is re-fitted to the steps
    that still fit (and the warmup to its share of them), so the learning rate reaches 0 when the
    time is up."""

    def __init__(self, cap: int, minutes: float, total_var, warmup_var=None, warmup_ratio: float = 0.0):
        self.cap, self.minutes, self.total_var = cap, minutes, total_var
        self.warmup_var, self.warmup_ratio = warmup_var, warmup_ratio
        self.began, self.timed_from, self.hit = time.time(), (time.time(), 0), False

    @property
    def total(self) -> int:
        return int(self.total_var.numpy())

    def over(self, done: int) -> bool:
        """True (and ``hit``) once the steps or the minutes are used up; else re-fits the schedule."""
        now = time.time()
        if done >= self.total or (self.minutes and now - self.began > 60 * self.minutes):
            self.hit = True
        elif self.minutes and done == 10:
            self.timed_from = (now, done)
        elif self.minutes and done % 50 == 0 and done > 10:
            per_step = (now - self.timed_from[0]) / (done - self.timed_from[1])
            fit = done + int((60 * self.minutes - (now - self.began)) / per_step)
            total = float(max(done + 1, min(self.cap, fit)))
            self.total_var.assign(total)
            if self.warmup_var is not None:  # the warmup is a share of the steps that fit, too
                self.warmup_var.assign(self.warmup_ratio * total)
        return self.hit


def _pretrain_context(w: PretrainWorker):
    """Rank, rows, strategy, resume checkpoint and reporter: Ray Train's, or this process's."""
    import tensorflow as tf

    from albert_ray.worker import Context, LocalReporter, RayReporter

    if w.rows is not None:
        return Context(0, 1, [np.asarray(r, np.int32) for r in w.rows], tf.distribute.get_strategy(), None,
                       LocalReporter(w.local_output))
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    rows = [np.asarray(r["token_ids"], np.int32) for r in ray.train.get_dataset_shard("train").iter_rows()]
    rows.sort(key=lambda r: r.tobytes())  # Ray Data's order varies between attempts; a resumed epoch skips by position
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if world > 1 else tf.distribute.get_strategy()
    return Context(rank, world, rows, strategy, ray.train.get_checkpoint(), RayReporter(rank))


def _build_pretraining(w: PretrainWorker, strategy, cap: int):
    """The MLM model (initialised, or from ``model.checkpoint``), AdamW with warmup and a decay
    that follows the :class:`Budget`, and the compiled step ``(ids, positions, labels, weights) -> loss``."""
    from dataclasses import replace

    import tensorflow as tf
    from tensorflow import keras

    from albert_ray import fused
    from albert_ray.encoder import dtype_policy, initialize_encoder
    from albert_ray.worker import WarmupLinearDecay

    t, checkpoint = w.cfg.train, w.cfg.model.checkpoint
    with strategy.scope():
        with dtype_policy(t.precision):
            model = build_mlm_model(w.encoder, t.sentence_order)
        fused.enable(model)  # packed sequences: one batch shape, compiled once
        std = init_std(w.encoder, w.cfg.model.init_range)
        initialize_encoder(model, replace(w.encoder, initializer_range=std), seed=t.seed)
        if checkpoint:
            from albert_ray.checkpoint import load_checkpoint

            load_checkpoint(model, w.encoder, checkpoint)
            log.info("MLM head %s", "continued from the checkpoint" if load_head(model, checkpoint)
                     else "new (the checkpoint has none)")
        else:
            log.info("random start: weights drawn with std %g", std)
        total_var = tf.Variable(float(cap), trainable=False, dtype=tf.float32)
        warmup_var = tf.Variable(float(int(cap * t.warmup_ratio)), trainable=False, dtype=tf.float32)
        schedule = WarmupLinearDecay(t.learning_rate, warmup_var, total_var)
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=t.weight_decay, epsilon=1e-6)
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias", "embeddings"])
        if t.precision == "mixed_float16":
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    scaled = t.precision == "mixed_float16"

    def replica_step(ids, seg, pos, labels, weights, order_labels, order_weights):
        reduce = tf.distribute.get_replica_context().all_reduce
        with tf.GradientTape() as tape:
            out = model([ids, seg, pos], training=True)
            loss_sum, _, n = _masked_loss(out[0] if t.sentence_order else out, labels, weights)
            loss = loss_sum / tf.maximum(reduce("sum", n), 1.0)
            if t.sentence_order:
                order_sum, _, m = _order_loss(out[1], order_labels, order_weights)
                loss += order_sum / tf.maximum(reduce("sum", m), 1.0)
        grads = tape.gradient(optimizer.get_scaled_loss(loss) if scaled else loss, model.trainable_variables)
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    sig = [tf.TensorSpec([None, None], tf.int32)] * 4 + [tf.TensorSpec([None, None], tf.float32),
                                                         tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.float32)]

    @tf.function(input_signature=sig, jit_compile=t.xla or None)
    def step(*batch):
        return strategy.reduce("sum", strategy.run(replica_step, args=batch), axis=None)

    return model, optimizer, step, Budget(cap, t.max_minutes, total_var, warmup_var, t.warmup_ratio)


def _restore_pretraining(model, optimizer, w: PretrainWorker, resume):
    """The loop state; weights, MLM head and optimizer slots from a Ray Train checkpoint."""
    from albert_ray.worker import TrainState, optimizer_state

    if resume is None:
        return TrainState()
    with resume.as_directory() as d:
        from albert_ray.checkpoint import load_checkpoint

        load_checkpoint(model, w.encoder, d)
        load_head(model, d)
        state = TrainState.load(d)
        saved = np.load(Path(d) / "optimizer.npz")
        for i, var in enumerate(optimizer_state(optimizer)):
            var.assign(saved[f"v{i}"])
    step = int(optimizer.iterations.numpy())
    state.resumes.append({"epoch": state.epoch + 1, "batch": state.batch, "step": step})
    log.info("resumed pre-training at epoch %d, batch %d (step %d)", state.epoch + 1, state.batch, step)
    return state


def _pretrain_epoch(step, optimizer, rows, w: PretrainWorker, rank: int, epoch: int, batches: tuple[int, int],
                    budget: Budget, midway) -> dict:
    """Batches ``first..steps-1`` of an epoch of dynamically masked batches (the order a function
    of seed, epoch and rank; a resumed epoch skips the batches done and draws new masks), calling
    ``midway(batch)`` every ``train.checkpoint_every_steps`` optimizer steps."""
    import tensorflow as tf

    t = w.cfg.train
    first, steps = batches
    rng = np.random.default_rng([t.seed, epoch, rank, first])
    order = np.random.default_rng([t.seed, epoch, rank]).permutation(len(rows))
    losses, seqs, began = [], 0, time.time()
    opening = (0, 0.0)  # the first step's sequences and seconds (tracing / XLA compile included)
    bar = StepBar(w.progress_bar and rank == 0, steps - first, f"epoch {epoch + 1}/{t.epochs}", w.rows is None)
    for i in range(first, steps):
        if budget.over(int(optimizer.iterations.numpy())):
            break
        batch = make_batch([rows[j] for j in order[i * t.batch_size : (i + 1) * t.batch_size]], rng, w.vocab, t)
        losses.append(float(step(*(tf.constant(x) for x in batch))))
        bar.step(losses[-1])
        if len(losses) == 1:  # sequences/s from the end of the first step on: not the tracing (and XLA) compile
            opening, began = (len(batch[0]), time.time() - began), time.time()
        else:
            seqs += len(batch[0])
        if rank == 0 and t.log_every and (i + 1) % t.log_every == 0 and bar.bar is None:
            log.info("epoch %d step %d/%d: MLM loss %.4f (%.1f sequences/s per worker)", epoch + 1, i + 1, steps,
                     np.mean(losses[-t.log_every:]), seqs / (time.time() - began))
        every = t.checkpoint_every_steps
        if every and i + 1 < steps and int(optimizer.iterations.numpy()) % every == 0 and not budget.hit:
            midway(i + 1)
    bar.close()
    return {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "steps": int(optimizer.iterations.numpy()), "sequences_per_second": _rate(seqs, time.time() - began, opening)}


def _rate(seqs: int, seconds: float, opening: tuple[int, float]) -> float:
    """Sequences/s after the first step; an epoch of one step (a budget ending right after it) has
    only that step to report, compile time included."""
    n, t = (seqs, seconds) if seqs else opening
    return n / max(t, 1e-9)


def evaluate_mlm(model, rows, vocab: Vocab, t: PretrainTrain) -> dict:
    """MLM loss and masked-token accuracy (and sentence-order accuracy) on held-out sequences
    (fixed masking and order)."""
    if not rows:
        return {"heldout_loss": float("nan"), "heldout_accuracy": float("nan"), "heldout_sequences": 0}
    rng = np.random.default_rng([t.seed, 999])
    sums = np.zeros(5)  # loss, correct, count; order correct, order count
    for i in range(0, len(rows), 64):
        ids, seg, pos, labels, weights, order_labels, order_weights = make_batch(rows[i : i + 64], rng, vocab, t)
        out = model([ids, seg, pos], training=False)
        mlm = _masked_loss(out[0] if t.sentence_order else out, labels, weights)
        order = _order_loss(out[1], order_labels, order_weights)[1:] if t.sentence_order else (0.0, 0.0)
        sums += [float(x) for x in (*mlm, *order)]
    result = {"heldout_loss": sums[0] / max(sums[2], 1), "heldout_accuracy": sums[1] / max(sums[2], 1),
              "heldout_sequences": len(rows)}
    if t.sentence_order:
        result["heldout_order_accuracy"] = sums[3] / max(sums[4], 1)
    return result


def _min_across(strategy, n: int, world: int) -> int:
    if world == 1:
        return n
    from albert_ray.worker import _min_across_workers

    return _min_across_workers(strategy, n)


# ---- driver ----------------------------------------------------------------------------------------
READ_TASK_CPUS = 0.5  # what sequences_dataset asks per read task (runtime.require_read_room checks it fits)


def pretrain(cfg: PretrainConfig, in_process: bool = False) -> dict:
    """Pre-train; write ``<output_dir>/<name>/pretrained/``; return its summary."""
    import shutil

    from albert_ray.runtime import init_ray, require_read_room, require_shared_storage

    began = time.time()
    encoder, vocab = resolve_model_files(cfg)
    if cfg.model.checkpoint:
        from albert_ray.checkpoint import check_checkpoint

        check_checkpoint(encoder, cfg.model.checkpoint)
    out = cfg.pretrained_dir
    t = cfg.train
    if in_process:
        rows = pack_texts(corpus_texts(cfg), CharTokenizer(vocab), cfg.model.max_len, t.whole_word_masking,
                          t.sentence_order)
        pretrain_loop_per_worker({"worker": PretrainWorker(cfg, encoder, vocab, t.tf_threads, rows, str(out),
                                                           bars_wanted())})
    else:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.tensorflow import TensorflowTrainer

        init_ray(cfg.ray_address)
        require_shared_storage(cfg.storage_path, "storage_path")
        require_read_room(t.num_workers, t.cpus_per_worker, READ_TASK_CPUS, "the corpus")
        storage = cfg.storage_path or str(Path(cfg.output_dir, "ray").resolve())
        threads = t.tf_threads or max(1, (os.cpu_count() or 1) // t.num_workers)
        trainer = TensorflowTrainer(
            pretrain_loop_per_worker,
            train_loop_config={"worker": PretrainWorker(cfg, encoder, vocab, threads, progress_bar=bars_wanted())},
            scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                         resources_per_worker={"CPU": t.cpus_per_worker}),
            datasets={"train": sequences_dataset(cfg, vocab)},
            run_config=RunConfig(name=f"{cfg.name}-pretrain", storage_path=storage,
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 failure_config=FailureConfig(max_failures=t.max_failures)))
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"pre-training run {cfg.name} ended without a checkpoint; see the log above")
        if out.exists():
            shutil.rmtree(out)
        with result.checkpoint.as_directory() as d:
            shutil.copytree(d, out)
    for name in ("optimizer.npz",):
        (out / name).unlink(missing_ok=True)
    summary = json.loads((out / "pretrain.json").read_text())
    summary.update(name=cfg.name, pretrained_dir=str(out), seconds=round(time.time() - began, 1),
                   precision=t.precision)
    (out / "pretrain.json").write_text(json.dumps(summary, indent=2))
    return summary
