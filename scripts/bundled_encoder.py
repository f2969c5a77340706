"""Build the encoder that ships with the project (``albert_ray/model/bundled/``), in three steps.

    python scripts/bundled_encoder.py corpus  --workdir W     # the unlabelled text and its record
    python scripts/bundled_encoder.py pretrain --workdir W [--minutes 100]
    python scripts/bundled_encoder.py pack    --workdir W     # float16 tensors into the repo
    python scripts/bundled_encoder.py all     --workdir W [--minutes 100]

The text is every training split in ``../shared/corpora`` (CLUENER train, DuEE train, the news
sample, People's Daily's training portion as its job carves it) and the training files of the
bundled samples. sogou is left out: its only split here is its test split. A line equal to a text
that any benchmark or test evaluates (CLUENER's test split, DuEE's dev split, People's Daily's
held-out dev, the bundled samples' dev and test files) is dropped, and so is a repeated line; the
record (``corpus.json``, copied into ``pretrain.json``) gives each source's lines, characters
and licence and both counts. Run it from a separate clone: it takes the machine for the budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

from albert_ray.io.training_files import read_examples  # noqa: E402
from benchmarks.pretrain_gain import training_split_texts, write_unlabelled  # noqa: E402

RECIPE = "jobs/configs/pretrain/bundled.yaml"
LICENCES = {
    "cluener_train": "CLUENER2020 (CLUE benchmark), released by its authors for research",
    "duee_train": "DuEE 1.0 (Baidu), released by its authors for research",
    "news_sample": "brightmart/albert_zh data/news_zh_1.txt (Apache-2.0 repository)",
    "peoples_daily_train": "People's Daily NER (percent4's example.test), the job's training portion only",
    "bundled_samples": "this project's own generated samples (scripts/make_samples.py)",
}
SAMPLE_TRAINING = (
    "data/ner_sample.train.bio",
    "data/classify_sample.train.csv",
    "data/multilabel_sample.train.csv",
    "data/generic_sample.jsonl",
    "data/cluener_sample.json",
)
SAMPLE_EVALUATED = (
    "data/ner_sample.dev.bio",
    "data/ner_sample.test.bio",
    "data/classify_sample.test.csv",
    "data/multilabel_sample.test.csv",
)


def texts_of(path: str) -> list[str]:
    multilabel = "multilabel" in path
    return [e.text for e in read_examples(path, multilabel=multilabel, on_bad_records="skip").examples]


def build_corpus(corpora: Path, workdir: Path) -> dict:
    sources, evaluated = training_split_texts(corpora)
    del sources["sogou"]  # its only split here is its test split
    sources["bundled_samples"] = [t for path in SAMPLE_TRAINING for t in texts_of(path)]
    evaluated += [t for path in SAMPLE_EVALUATED for t in texts_of(path)]
    record = write_unlabelled(sources, evaluated, workdir / "unlabelled.txt")
    for name, row in record["sources"].items():
        row["licence"] = LICENCES[name]
    record["excluded"] = [
        "sogou_mini/test.csv (its only split is a test split)",
        "cluener/cluener.test",
        "duee_event_types/test.csv",
        "People's Daily's held-out dev (10 % of example.test)",
        *SAMPLE_EVALUATED,
    ]
    (workdir / "corpus.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    return record


def pretrain(corpora: Path, workdir: Path, minutes: float) -> dict:
    from albert_ray.pretrain.config import load_pretrain_config
    from albert_ray.pretrain.driver import pretrain as run

    cfg = load_pretrain_config(
        RECIPE,
        [
            f"output_dir={workdir}",
            f"model.vocab={corpora}/albert_zh/vocab.txt",
            f"train.max_minutes={minutes:g}",
        ],
        [str(workdir / "unlabelled.txt")],
    )
    return run(cfg, in_process=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=("corpus", "pretrain", "pack", "all"))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"))
    parser.add_argument("--minutes", type=float, default=100.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    workdir, corpora = Path(args.workdir).resolve(), Path(args.corpora)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.step in ("corpus", "all"):
        record = build_corpus(corpora, workdir)
        print(json.dumps(record, indent=2, ensure_ascii=False))
    if args.step in ("pretrain", "all"):
        print(json.dumps(pretrain(corpora, workdir, args.minutes), indent=2))
    if args.step in ("pack", "all"):
        from albert_ray.model.bundled import pack
        from albert_ray.pretrain.config import load_pretrain_config
        from albert_ray.runtime.hardware import machine_record

        cfg = load_pretrain_config(RECIPE, [f"train.max_minutes={args.minutes:g}"], ["unlabelled.txt"])
        recipe = {
            "config": RECIPE,
            "command": " ".join(["python", *sys.argv]),
            "train": asdict(cfg.train),
            **machine_record(),
        }
        print(
            json.dumps(
                pack(workdir / "bundled" / "pretrained", workdir / "corpus.json", recipe=recipe), indent=2
            )
        )


if __name__ == "__main__":
    main()
