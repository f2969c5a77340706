"""What masked-LM pre-training buys, and what bfloat16 buys pre-training, on this machine.

    python benchmarks/pretrain_gain.py [--minutes 30] [--corpora ../shared/corpora] [--skip-gain]
        [--skip-throughput] [--workers]

* throughput: pre-training sequences/s of the sample encoder (brightmart layout, H=128, 4 layers)
  and of the albert-tiny shape (H=312), both with the 21,128-word brightmart vocabulary and
  128-token sequences: float32, float32 with XLA, mixed_bfloat16, each with the MLM softmax over
  the ids the corpus holds (the default) and over the whole vocabulary (``full``), the same steps
  each (counted from the end of the first, compiled step); with ``--workers``, Ray Train on 1
  against 2 workers;
* gain: pre-train the sample encoder with ``RECIPE`` (``jobs/configs/pretrain/corpus_30min.yaml``:
  lr 3e-3, mixed_bfloat16, the MLM softmax over the corpus' ids) for ``--minutes`` on unlabelled
  text of training splits only (CLUENER train, DuEE train, sogou, the albert_zh news sample, and
  the 90 % of People's Daily its job trains on; never CLUENER's test split, DuEE's dev split or
  People's Daily's held-out dev, and no line equal to an evaluated text), then fine-tune CLUENER,
  People's Daily and DuEE with the same recipe from random init and from the pre-trained
  checkpoint (both at every ``--learning-rates`` rate, each reported at its best), and compare
  micro-F1 (entities; event types for DuEE). The recipe is bounded (``RECIPES``, a few minutes a
  run) or, with ``--recipe full``, each task's whole training and evaluation splits.

Prints a table and writes ``benchmarks/results/pretrain_gain.json``.

    python benchmarks/pretrain_gain.py --checkpoints DIR [--configs sogou_classify,...] [--set key=value ...]

* reference table: for a folder of brightmart release folders (``albert_tiny_zh/``,
  ``albert_base_zh/``, ``albert_xlarge_zh/``, ...), fine-tune each task's job config from each
  checkpoint and print the test score beside the reference article's published number
  (``benchmarks/results/reference_table.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

from albert_ray.runtime.hardware import machine_record  # noqa: E402

MODELS = {
    "cluener": ["model.bilstm_units=0"],
    "peoples_daily": ["model.bilstm_units=0"],  # in both recipes
    "duee_multilabel": ["model.max_len=128"],
}
RECIPES = {  # bounded fine-tuning recipes (a few minutes each on 2 cores), the same for both starts
    "cluener": [
        "data.max_train_examples=4000",
        "data.max_eval_examples=500",
        "train.epochs=6",
        *MODELS["cluener"],
    ],
    "peoples_daily": [
        "data.max_train_examples=3000",
        "data.max_eval_examples=400",
        "train.epochs=8",
        *MODELS["peoples_daily"],
    ],
    "duee_multilabel": [
        "data.max_train_examples=4000",
        "data.max_eval_examples=500",
        "train.epochs=6",
        *MODELS["duee_multilabel"],
    ],
}
# ``--recipe full``: each task's whole training split (CLUENER 9,673 sentences after the job's dev
# carve, People's Daily 4,173, DuEE 10,763) and whole evaluation split (CLUENER 1,343, People's Daily 463, DuEE 1,498)
FULL_RECIPES = {
    "cluener": ["train.epochs=6", *MODELS["cluener"]],
    "peoples_daily": ["train.epochs=10", *MODELS["peoples_daily"]],
    "duee_multilabel": ["train.epochs=6", *MODELS["duee_multilabel"]],
}
# each start is fine-tuned at every rate and reported at its best: a pre-trained encoder and a
# random one do not share a best learning rate, and one fixed rate would favour one of them
LEARNING_RATES = (1e-3, 4e-3)
# the pre-training recipe (the README's), shapes and budgets overridden
RECIPE = "jobs/configs/pretrain/corpus_30min.yaml"


def evaluated_and_training_texts(corpora: Path) -> tuple[list[str], list[str]]:
    """The texts each fine-tuning recipe evaluates on, and People's Daily's training portion.

    People's Daily has no training file here: its job holds 10 % of ``example.test`` out as dev
    (evaluated) and trains on the rest. That rest is the fine-tuning set's own text — its labels
    are seen in fine-tuning anyway — so it may be pre-trained on as CLUENER's and DuEE's training
    files are; the held-out dev never is. The split is the job's own (:func:`training.prepare`)."""
    from albert_ray.finetune.config import load_job_config
    from albert_ray.finetune.driver import prepare
    from albert_ray.io.training_files import read_examples

    pd = prepare(
        load_job_config(
            "jobs/configs/peoples_daily.yaml", [f"data.train={corpora}/peoples_daily/example.test"]
        )
    )
    evaluated = [e.text for e in pd.dev]
    evaluated += [
        e.text for e in read_examples(corpora / "cluener" / "cluener.test", on_bad_records="skip").examples
    ]
    evaluated += [
        e.text
        for e in read_examples(
            corpora / "duee_event_types" / "test.csv", multilabel=True, on_bad_records="skip"
        ).examples
    ]
    return evaluated, [e.text for e in pd.train]


def one_line(text: str) -> str:
    """A text as one line of the pre-training corpus: runs of whitespace (newlines too) made one space."""
    return " ".join(text.split())


def training_split_texts(corpora: Path) -> tuple[dict[str, list[str]], list[str]]:
    """The unlabelled text of every training split here, by source (CLUENER train, DuEE train,
    sogou, the news sample, People's Daily's training portion), and the texts that are evaluated."""
    from albert_ray.io.training_files import read_examples

    evaluated, pd_train = evaluated_and_training_texts(corpora)
    sources = {
        "cluener_train": [
            e.text
            for e in read_examples(corpora / "cluener" / "cluener.train", on_bad_records="skip").examples
        ],
        "duee_train": [
            e.text
            for e in read_examples(
                corpora / "duee_event_types" / "train.csv", multilabel=True, on_bad_records="skip"
            ).examples
        ],
        "sogou": [
            e.text for e in read_examples(corpora / "sogou_mini" / "test.csv", on_bad_records="skip").examples
        ],
        "news_sample": (corpora / "pretrain_sample" / "news_zh_1.txt")
        .read_text(encoding="utf-8")
        .splitlines(),
        "peoples_daily_train": pd_train,
    }
    return sources, evaluated


def write_unlabelled(sources: dict[str, list[str]], evaluated: list[str], out: Path) -> dict:
    """One text per line; a line equal to an evaluated text, or to a line already written, is dropped."""
    banned = {one_line(t) for t in evaluated}
    seen: set[str] = set()
    lines, stats = [], {"evaluated_lines_dropped": 0, "duplicate_lines_dropped": 0, "sources": {}}
    for name, texts in sources.items():
        kept = [t for t in map(one_line, texts) if t]
        stats["evaluated_lines_dropped"] += sum(t in banned for t in kept)
        kept = [t for t in kept if t not in banned]
        unique = [t for t in dict.fromkeys(kept) if t not in seen]
        stats["duplicate_lines_dropped"] += len(kept) - len(unique)
        seen.update(unique)
        stats["sources"][name] = {"lines": len(unique), "chars": sum(len(t) for t in unique)}
        lines += unique
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"chars": sum(len(t) for t in lines), "lines": len(lines), **stats}


def unlabelled_text(corpora: Path, out: Path) -> dict:
    """The benchmark's pre-training text: every training split here, sogou included."""
    sources, evaluated = training_split_texts(corpora)
    return write_unlabelled(sources, evaluated, out)


SHAPES = {"sample": "data/albert_config_sample.json", "tiny": "{corpora}/albert_zh/albert_config_tiny.json"}


def pretrain_run(
    corpus: Path, out: Path, corpora: Path, *overrides: str, in_process: bool = True, shape: str = "sample"
) -> dict:
    from albert_ray.pretrain.config import load_pretrain_config
    from albert_ray.pretrain.driver import pretrain

    encoder = SHAPES[shape].format(corpora=corpora)
    cfg = load_pretrain_config(
        RECIPE,
        [
            "name=bench",
            f"output_dir={out}",
            f"model.encoder_config={encoder}",
            f"model.vocab={corpora}/albert_zh/vocab.txt",
            "train.checkpoint_every_steps=0",
            *overrides,
        ],
        [str(corpus)],
    )
    return pretrain(cfg, in_process=in_process)


def workers_throughput(corpus: Path, corpora: Path, steps: int) -> list[dict]:
    """Ray Train pre-training on 1 and on 2 workers (0.7 CPU each, leaving room for Ray Data's
    read tasks), the same steps per worker: sequences/s of the run."""
    rows = []
    for n in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            s = pretrain_run(
                corpus,
                Path(tmp),
                corpora,
                f"train.num_workers={n}",
                "train.cpus_per_worker=0.7",
                f"train.max_steps={steps}",
                "train.epochs=1",
                "train.max_minutes=0",
                "train.precision=float32",
                in_process=False,
            )
        per_worker = s["history"][-1]["sequences_per_second"]
        rows.append(
            {
                "workers": n,
                "steps": s["history"][-1]["steps"],
                "sequences_per_second_per_worker": round(per_worker, 1),
                "sequences_per_second": round(per_worker * n, 1),
            }
        )
    rows[1]["x_one_worker"] = round(rows[1]["sequences_per_second"] / rows[0]["sequences_per_second"], 2)
    return rows


def throughput(corpus: Path, corpora: Path, steps: int, repeat: int = 1) -> list[dict]:
    """Sequences/s of the same steps per shape: float32, float32 with XLA, mixed_bfloat16, each
    with the softmax over the corpus' ids and over the whole vocabulary; with ``repeat`` > 1 the
    configurations run in turn that many times (so a drift of the machine's speed touches all of
    them) and each reports its median. ``x_float32``: against float32 with the same softmax."""
    configs = [
        (shape, precision, xla, output)
        for shape in SHAPES
        for output in ("corpus", "full")
        for precision, xla in (("float32", False), ("float32", True), ("mixed_bfloat16", False))
    ]
    runs: dict[tuple, list[float]] = {c: [] for c in configs}
    ran: dict[tuple, int] = {}  # the steps a run took (the corpus' one epoch may hold fewer than asked)
    for _ in range(repeat):
        for shape, precision, xla, output in configs:
            with tempfile.TemporaryDirectory() as tmp:
                s = pretrain_run(
                    corpus,
                    Path(tmp),
                    corpora,
                    f"train.precision={precision}",
                    f"train.xla={xla}",
                    f"train.output_vocabulary={output}",
                    f"train.max_steps={steps}",
                    "train.epochs=1",
                    "train.max_minutes=0",
                    shape=shape,
                )
            runs[(shape, precision, xla, output)].append(s["history"][-1]["sequences_per_second"])
            ran[(shape, precision, xla, output)] = s["history"][-1]["steps"]
    median = {c: statistics.median(rates) for c, rates in runs.items()}
    return [
        {
            "shape": shape,
            "precision": precision,
            "xla": xla,
            "output_vocabulary": output,
            "steps": ran[(shape, precision, xla, output)],
            "sequences_per_second": round(median[(shape, precision, xla, output)], 1),
            "runs": [round(r, 1) for r in runs[(shape, precision, xla, output)]],
            "x_float32": round(
                median[(shape, precision, xla, output)] / median[(shape, "float32", False, output)], 2
            ),
            "x_full_softmax": round(
                median[(shape, precision, xla, output)] / median[(shape, precision, xla, "full")], 2
            ),
        }
        for shape, precision, xla, output in configs
    ]


def fine_tune(
    name: str,
    out: Path,
    corpora: Path,
    checkpoint: Path | None,
    learning_rate: float,
    recipe: list[str] | None = None,
) -> dict:
    """Fine-tune job config ``name`` with ``recipe`` (default: its bounded :data:`RECIPES` one) from
    ``checkpoint`` (``None``: random init of the sample encoder); micro-F1 on the evaluated split."""
    from albert_ray.finetune.config import load_job_config
    from albert_ray.finetune.driver import train_in_process

    init = (
        ["model.init=checkpoint", f"model.checkpoint={checkpoint}"]
        if checkpoint
        else [
            "model.encoder_config=data/albert_config_sample.json",
            f"model.vocab={corpora}/albert_zh/vocab.txt",
        ]
    )
    job = load_job_config(
        f"jobs/configs/{name}.yaml",
        [
            f"output_dir={out}",
            "train.log_every=0",
            "train.patience=10",
            f"train.learning_rate={learning_rate}",
            *(RECIPES[name] if recipe is None else recipe),
            *init,
        ],
    )
    began = time.time()
    summary = train_in_process(job)
    return {
        "task": name,
        "init": "pretrained" if checkpoint else "random",
        "learning_rate": learning_rate,
        "micro_f1": round(summary["metrics"]["micro avg"]["f1-score"], 4),
        "dev_score": round(summary["best_dev_score"], 4),
        "seconds": round(time.time() - began),
    }


# the reference article's published test scores (accuracy for sogou, micro-F1 otherwise)
PUBLISHED = {
    ("sogou_classify", "tiny"): 0.9475,
    ("sogou_classify", "base"): 0.9616,
    ("sogou_classify", "xlarge"): 0.9636,
    ("duee_multilabel", "tiny"): 0.9025,
    ("duee_multilabel", "base"): 0.9382,
    ("peoples_daily", "tiny"): 0.8163,
    ("peoples_daily", "base"): 0.8824,
    ("cluener", "tiny"): 0.6260,
    ("cluener", "base"): 0.7255,
}
REFERENCE_CONFIGS = ("sogou_classify", "duee_multilabel", "peoples_daily", "cluener")


def release_folders(checkpoints: Path) -> list[tuple[str, Path]]:
    """``(size, folder)`` of every brightmart release folder (``albert_<size>_zh*``) under ``checkpoints``."""
    import re

    found = []
    for folder in sorted(p for p in checkpoints.iterdir() if p.is_dir()):
        m = re.match(r"^albert_([a-z]+)_zh", folder.name)
        if m and list(folder.glob("*.index")):
            found.append((m.group(1), folder))
    if not found:
        raise SystemExit(
            f"{checkpoints}: no brightmart release folder (albert_<size>_zh/ with a checkpoint) in it"
        )
    return found


def reference_table(checkpoints: Path, configs: list[str], out: Path, overrides: list[str]) -> list[dict]:
    """Fine-tune every job config from every release folder; the test score beside the published one."""
    from albert_ray.finetune.config import load_job_config
    from albert_ray.finetune.driver import train_in_process
    from albert_ray.tasks.registry import task_for

    rows = []
    for size, folder in release_folders(checkpoints):
        for name in configs:
            job = load_job_config(
                f"jobs/configs/{name}.yaml",
                [
                    f"output_dir={out / size}",
                    "model.init=checkpoint",
                    f"model.checkpoint={folder}",
                    *overrides,
                ],
            )
            began = time.time()
            summary = train_in_process(job)
            rows.append(
                {
                    "config": name,
                    "size": size,
                    "score": round(task_for(job.task).dev_score(summary["metrics"]), 4),
                    "published": PUBLISHED.get((name, size)),
                    "seconds": round(time.time() - began),
                }
            )
            print(f"{name:<18}{size:<8}{rows[-1]['score']:>8.4f}", flush=True)
    return rows


def print_reference(rows: list[dict]) -> None:
    print(f"{'config':<18}{'size':<8}{'score':>8}{'published':>11}")
    for r in rows:
        published = f"{r['published']:.4f}" if r["published"] is not None else "-"
        print(f"{r['config']:<18}{r['size']:<8}{r['score']:>8.4f}{published:>11}")


def gain(
    args: argparse.Namespace, corpus: Path, corpora: Path, workdir: Path, tasks: list[str], rates: list[float]
) -> dict:
    """Pre-train the sample encoder on ``corpus`` (or read ``--pretrained``'s folder), then fine-tune
    every task from random init and from the pre-trained folder at every rate."""
    began = time.time()
    if args.pretrained:
        folder = Path(args.pretrained)
        summary = json.loads((folder / "pretrain.json").read_text())
    else:
        xla = args.precision == "float32" if args.xla is None else args.xla  # the recipe's precision: off
        precision = [f"train.precision={args.precision}"] if args.precision else []
        summary = pretrain_run(
            corpus,
            workdir / "pt",
            corpora,
            f"train.max_minutes={args.minutes}",
            f"train.xla={xla}",
            *precision,
            *args.pretrain_overrides,
        )
        folder = Path(summary["pretrained_dir"])
    recipes = RECIPES if args.recipe == "bounded" else FULL_RECIPES
    rows = [
        fine_tune(
            name,
            workdir / f"{name}-{init}-{lr}",
            corpora,
            folder if init == "pt" else None,
            lr,
            recipes[name],
        )
        for name in tasks
        for init in args.starts.split(",")
        for lr in rates
    ]
    return {
        "pretraining": {
            "minutes": round(summary.get("seconds", time.time() - began) / 60, 1),
            **summary["history"][-1],
        },
        "recipe": {name: recipes[name] for name in tasks},
        "fine_tuning": rows,
        "best": best_of(rows),
    }


def best_of(rows: list[dict]) -> dict:
    """Per task, each start's micro-F1 at the rate its dev score chose (the job's dev split, carved
    from training data; never the evaluated split), that rate, and the pre-trained start's gain."""
    best: dict = {}
    for r in rows:
        task = best.setdefault(r["task"], {})
        if r["init"] not in task or r.get("dev_score", 0) > task[r["init"]]["dev_score"]:
            task[r["init"]] = {
                "dev_score": r.get("dev_score", 0),
                "micro_f1": r["micro_f1"],
                "rate": r["learning_rate"],
            }
    out = {}
    for name, starts in best.items():
        out[name] = {init: b["micro_f1"] for init, b in starts.items()}
        out[name]["chosen_rates"] = {init: b["rate"] for init, b in starts.items()}
        if {"random", "pretrained"} <= set(starts):
            out[name]["gain"] = round(out[name]["pretrained"] - out[name]["random"], 4)
    return out


def print_result(result: dict, tasks: list[str], rates: list[float]) -> None:
    """The run as tables: corpus, throughput, workers, and micro-F1 per rate and best against best."""
    print(
        f"unlabelled text: {result['unlabelled']['chars']:,} characters "
        f"({', '.join(f'{k} {v:,}' for k, v in result['unlabelled'].items() if isinstance(v, int) and k != 'chars')}; "
        f"{', '.join(f'{k} {v}' for k, v in result['unlabelled'].get('sources', {}).items())})"
    )
    for row in result.get("throughput", []):
        print(
            f"pre-training {row['shape']:>6} {row['precision']:>15}{' + XLA' if row['xla'] else '':6} "
            f"softmax {row.get('output_vocabulary', 'full'):>6}: {row['sequences_per_second']:>7.1f} sequences/s  "
            f"({row['x_float32']}x float32, {row.get('x_full_softmax', 1.0)}x the full softmax)"
        )
    for row in result.get("workers", []):
        print(
            f"pre-training on {row['workers']} Ray Train worker(s): {row['sequences_per_second']:>7.1f} sequences/s"
            + (f"  ({row['x_one_worker']}x one worker)" if "x_one_worker" in row else "")
        )
    if "pretraining" in result:
        p = result["pretraining"]
        print(
            f"pre-training: {p['minutes']} min, {p['steps']} steps, held-out MLM loss {p['heldout_loss']:.3f}, "
            f"masked-token accuracy {p['heldout_accuracy']:.3f}"
        )
        print(
            f"micro-F1 (entities; event types for DuEE)\n{'task':<17}{'lr':>8}{'random init':>12}{'pre-trained':>12}"
        )
        for name in tasks:
            for lr in rates:
                got = {
                    r["init"]: r["micro_f1"]
                    for r in result["fine_tuning"]
                    if r["task"] == name and r["learning_rate"] == lr
                }
                print(
                    f"{name:<17}{lr:>8g}{got.get('random', float('nan')):>12.4f}"
                    f"{got.get('pretrained', float('nan')):>12.4f}"
                )
            b = result["best"][name]
            print(
                f"{name:<17}{'on dev':>8}{b.get('random', float('nan')):>12.4f}"
                f"{b.get('pretrained', float('nan')):>12.4f}  rates {b['chosen_rates']}"
                + (f"  gain {b['gain']:+.4f}" if "gain" in b else "")
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"))
    parser.add_argument("--minutes", type=float, default=30.0, help="pre-training budget (default 30)")
    parser.add_argument("--throughput-steps", type=int, default=40)
    parser.add_argument(
        "--repeat", type=int, default=1, help="throughput runs per configuration, in turn (median)"
    )
    parser.add_argument(
        "--precision", help="pre-training precision of the gain run (default: the recipe's, mixed_bfloat16)"
    )
    parser.add_argument(
        "--xla",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=None,
        help="jit-compile the pre-training step (default: in float32 only, 1.06x there on the sample encoder; with "
        "mixed_bfloat16 XLA's CPU matmuls lose bfloat16's gain)",
    )
    parser.add_argument(
        "--pretrain-set",
        dest="pretrain_overrides",
        action="append",
        default=[],
        help="a pre-training config override, e.g. train.learning_rate=2e-3 (repeatable)",
    )
    parser.add_argument("--workers", action="store_true", help="also measure 1 against 2 Ray Train workers")
    parser.add_argument(
        "--workdir", help="keep the pre-trained folder and runs here (default: a temporary folder)"
    )
    parser.add_argument("--pretrained", help="fine-tune from this pre-trained folder instead of pre-training")
    parser.add_argument(
        "--recipe",
        choices=("bounded", "full"),
        default="bounded",
        help="fine-tuning recipe: bounded (RECIPES, default) or full (FULL_RECIPES: whole splits)",
    )
    parser.add_argument(
        "--tasks", default=",".join(RECIPES), help="the job configs fine-tuned (default: all three)"
    )
    parser.add_argument(
        "--learning-rates",
        default=",".join(f"{lr:g}" for lr in LEARNING_RATES),
        help="fine-tuning rates, each start reported at its best (default 0.001,0.004)",
    )
    parser.add_argument(
        "--starts",
        default="random,pt",
        help="fine-tuning starts: random and/or pt (the pre-trained folder); default both",
    )
    parser.add_argument("--skip-gain", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "pretrain_gain.json"))
    parser.add_argument(
        "--checkpoints", help="a folder of brightmart release folders: run the reference table"
    )
    parser.add_argument(
        "--configs", default=",".join(REFERENCE_CONFIGS), help="job configs of the reference table"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="a job-config override for every reference run, e.g. train.epochs=3 (repeatable)",
    )
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run = {
        "command": shlex.join(["python", "benchmarks/pretrain_gain.py", *sys.argv[1:]]),
        **machine_record(),
    }
    if args.checkpoints:
        with tempfile.TemporaryDirectory() as tmp:
            rows = reference_table(Path(args.checkpoints), args.configs.split(","), Path(tmp), args.overrides)
        print_reference(rows)
        output = Path(
            args.output
            if args.output != parser.get_default("output")
            else ROOT / "benchmarks" / "results" / "reference_table.json"
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({**run, "checkpoints": args.checkpoints, "rows": rows}, indent=2))
        return
    corpora = Path(args.corpora)
    tasks, rates = args.tasks.split(","), [float(v) for v in args.learning_rates.split(",")]
    if unknown := [t for t in tasks if t not in RECIPES]:
        raise SystemExit(f"--tasks: unknown {', '.join(unknown)} (choose from {', '.join(RECIPES)})")
    result: dict = {**run, "encoder": "data/albert_config_sample.json"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(args.workdir or tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        corpus = tmp / "unlabelled.txt"
        result["unlabelled"] = unlabelled_text(corpora, corpus)
        if not args.skip_throughput:
            result["throughput"] = throughput(corpus, corpora, args.throughput_steps, args.repeat)
        if args.workers:
            result["workers"] = workers_throughput(corpus, corpora, args.throughput_steps)
        if not args.skip_gain:
            result.update(gain(args, corpus, corpora, tmp, tasks, rates))
    # written first: a printing error loses nothing
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print_result(result, tasks, rates)


if __name__ == "__main__":
    main()
