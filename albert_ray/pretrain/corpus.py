"""The pre-training corpus read: input files to packed ``[CLS] ... [SEP]`` sequences, in this
process or in Ray Data read tasks, by the labeling read path (any format, path, glob or URI),
with every skipped row counted by kind (:class:`CorpusCount`) — pre-training keeps no
quarantine but never drops a row unsaid. Packing and masking themselves: :mod:`albert_ray.pretrain.masking`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from albert_ray.io.corpus import ReadOptions, expand_inputs, plan_units, read_file, read_task, reason_kind
from albert_ray.model.tokenization import CharTokenizer, Vocab
from albert_ray.paths import without_credentials
from albert_ray.pretrain.masking import is_heldout, pack_texts

if TYPE_CHECKING:
    from albert_ray.pretrain.config import PretrainConfig

log = logging.getLogger(__name__)

READ_TASK_CPUS = 0.5  # what sequences_dataset asks per read task (attach.require_read_room checks it fits)


def read_tasks(cfg: PretrainConfig) -> list[dict]:
    """One read task per input file (the whole file as one unit: pre-training keeps no unit records)."""

    files = expand_inputs(cfg.inputs, cfg.format)
    by_path = {f.path: f for f in files}
    return [read_task(by_path[u.path], [u]) for u in plan_units(files, 1 << 62)]


@dataclass
class CorpusCount:
    """What reading the corpus gave: texts kept, sequences packed, and the rows skipped by kind,
    the first one named by file and line (pre-training keeps no quarantine, but never drops a
    row unsaid)."""

    texts: int = 0
    sequences: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    first_skipped: str | None = None

    def add(self, table) -> list[str]:
        """Count one block of :func:`albert_ray.io.corpus.read_file` rows; return its readable texts."""

        rows = table.filter(pc.is_null(table.column("meta")))  # a unit's end row is no input row
        bad = rows.filter(pc.is_valid(rows.column("reason")))
        for source, line, reason in zip(*(bad.column(c).to_pylist() for c in ("source", "line", "reason"))):
            kind = reason_kind(reason)
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
            if self.first_skipped is None:
                self.first_skipped = f"{source}{'' if line is None else f' line {line}'}: {reason}"
        texts = rows.filter(pc.is_null(rows.column("reason"))).column("text").to_pylist()
        self.texts += len(texts)
        return texts

    def merge(self, other: CorpusCount) -> None:
        self.texts, self.sequences = self.texts + other.texts, self.sequences + other.sequences
        for kind, n in other.skipped.items():
            self.skipped[kind] = self.skipped.get(kind, 0) + n
        self.first_skipped = self.first_skipped or other.first_skipped

    def describe(self) -> str:
        """One line: ``800 texts, 120 sequences; 3 rows skipped (empty text 2, NUL character 1; the first:
        f line 4: ...)``."""
        line = f"{_count(self.texts, 'text')}, {_count(self.sequences, 'sequence')}"
        if self.skipped:
            kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
            line += f"; {_count(sum(self.skipped.values()), 'row')} skipped ({kinds}; the first: {self.first_skipped})"
        return line


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def task_sequences(task: dict, cfg: PretrainConfig, vocab: Vocab, count: CorpusCount):
    """The packed sequences of one read task, a block of rows at a time (texts are packed within a
    block: the same sequences in a Ray Data read task and in this process); ``count`` grows."""

    tokenizer = CharTokenizer(vocab)
    for table in read_file(task, ReadOptions(cfg.format, cfg.text_field, None, 1_000_000)):
        seqs = pack_texts(
            count.add(table),
            tokenizer,
            cfg.model.max_len,
            cfg.train.whole_word_masking,
            cfg.train.sentence_order,
        )
        count.sequences += len(seqs)
        if seqs:
            yield seqs


def corpus_texts(cfg: PretrainConfig):
    """Every readable text of the inputs, streamed (for ``model.vocab: auto``)."""

    count = CorpusCount()
    for task in read_tasks(cfg):
        for table in read_file(task, ReadOptions(cfg.format, cfg.text_field, None, 1_000_000)):
            yield from count.add(table)


def corpus_sequences(cfg: PretrainConfig, vocab: Vocab) -> tuple[list[list[int]], CorpusCount]:
    """Every packed sequence of the inputs, read in this process, and the count of the read."""
    count, rows = CorpusCount(), []
    for task in read_tasks(cfg):
        for seqs in task_sequences(task, cfg, vocab, count):
            rows += seqs
    return rows, count


def _named(inputs) -> str:
    """The inputs as an error names them: the first three, without credentials."""

    return ", ".join(map(without_credentials, inputs[:3])) + (
        f" (+{len(inputs) - 3} more)" if len(inputs) > 3 else ""
    )


def too_small(
    cfg: PretrainConfig, training: int, workers: int, count: CorpusCount | None = None
) -> ValueError:
    """The one-line error of a corpus with fewer training sequences than one step takes."""
    inputs = _named(cfg.inputs)
    read = f" ({count.describe()})" if count else ""
    return ValueError(
        f"{inputs}: the corpus gives {_count(training, 'training sequence')} of model.max_len="
        f"{cfg.model.max_len}{read}; one step takes {cfg.train.batch_size * workers} (train.batch_size "
        f"{cfg.train.batch_size} x {_count(workers, 'worker')}): add text or lower train.batch_size"
    )


def require_enough_text(cfg: PretrainConfig, vocab: Vocab) -> None:
    """Before any Ray worker starts: read the corpus as its read tasks will, only until one step's
    training sequences (and a whole one for each worker's share) are packed.

    Raises:
        ValueError: the corpus ends first (say, every row bad: a wrong ``text_field``).
    """
    t = cfg.train
    needed, training, count = t.batch_size * t.num_workers + t.num_workers - 1, 0, CorpusCount()
    for task in read_tasks(cfg):
        for seqs in task_sequences(task, cfg, vocab, count):
            training += sum(not is_heldout(s, t.heldout_permille) for s in seqs)
            if training >= needed:
                return
    raise too_small(cfg, training, t.num_workers, count)


def require_a_step_per_share(cfg: PretrainConfig, shares, count: CorpusCount) -> None:
    """After the corpus is cut among the workers (``attach.every_row_split``): each worker's
    share must hold one step's training sequences. Held-out sequences are chosen by content, so
    they can gather in one share and leave it short although the whole corpus has enough.

    Raises:
        ValueError: one line with every share's training sequences and what to change.
    """
    b = cfg.train.batch_size
    training = [s.count() - int(s.sum("heldout") or 0) for s in shares]
    if min(training) >= b:
        return
    inputs = _named(cfg.inputs)
    raise ValueError(
        f"{inputs}: the corpus gives {_count(sum(training), 'training sequence')} of model.max_len="
        f"{cfg.model.max_len} ({count.describe()}), cut among {len(shares)} workers as "
        f"{' + '.join(f'{n:,}' for n in training)} (held-out sequences fall unevenly); each worker's "
        f"step takes train.batch_size {b}: add text or lower train.batch_size or "
        f"train.heldout_permille"
    )


class CorpusTally:
    """A Ray actor the read tasks report to, a count per file: a re-executed task (a retry, a
    lost block read again) overwrites its file's count instead of adding to it."""

    def __init__(self):
        self.by_file: dict[str, CorpusCount] = {}

    def put(self, path: str, count: CorpusCount) -> None:
        self.by_file[path] = count

    def get(self) -> dict[str, CorpusCount]:
        return self.by_file


def _read_and_pack(batch, cfg: PretrainConfig, vocab: Vocab, tally):
    """Ray Data UDF: a file's read task in, packed sequences out; its count to ``tally``."""
    import ray

    for task in map(json.loads, batch["task"]):
        count = CorpusCount()
        for seqs in task_sequences(task, cfg, vocab, count):
            yield pa.table(
                {"token_ids": seqs, "heldout": [is_heldout(s, cfg.train.heldout_permille) for s in seqs]}
            )
        ray.get(tally.put.remote(task["path"], count))


def sequences_dataset(cfg: PretrainConfig, vocab: Vocab, tally):
    """A Ray dataset of packed sequences ``{"token_ids", "heldout"}``, read one task per file;
    each task's :class:`CorpusCount` goes to the ``tally`` actor."""
    import ray

    tasks = read_tasks(cfg)
    log.info("pre-training on %d files", len(tasks))
    return ray.data.from_items([{"task": json.dumps(t)} for t in tasks]).map_batches(
        _read_and_pack,
        fn_kwargs={"cfg": cfg, "vocab": vocab, "tally": tally},
        batch_size=1,
        num_cpus=READ_TASK_CPUS,
    )


def peek_tally(tally) -> CorpusCount:
    """The whole corpus' count so far from a :class:`CorpusTally` actor (the first skipped row: in
    path order)."""
    import ray

    count = CorpusCount()
    for path in sorted(by_file := ray.get(tally.get.remote())):
        count.merge(by_file[path])
    return count
