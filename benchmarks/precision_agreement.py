"""Agreement of reduced-precision labeling with float32 on a trained model.

For each precision: the test-set score against the gold labels (entity micro-F1 for NER, accuracy
or micro-F1 for the sentence tasks), its drift from float32, and the agreement with float32's own
predictions (NER: entity micro-F1 of the predictions against the float32 predictions; sentence
tasks: the share of texts with the same label(s)); plus rows/s of ``Labeler.predict``.
Prints a table, writes benchmarks/results/precision_agreement.json.

usage: python benchmarks/precision_agreement.py --model runs/cluener/model --data ../shared/corpora/cluener/cluener.test
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from albert_ray.runtime.hardware import machine_record  # noqa: E402

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _entity_set(predictions):
    return {(i, e["start"], e["end"], e["label"]) for i, p in enumerate(predictions) for e in p["entities"]}


def agreement(task: str, reference: list[dict], other: list[dict]) -> float:
    if task == "ner":
        ref, got = _entity_set(reference), _entity_set(other)
        if not ref and not got:
            return 1.0
        tp = len(ref & got)
        return 2 * tp / (len(ref) + len(got))
    key = "label" if task == "classify" else "labels"
    return sum(r[key] == o[key] for r, o in zip(reference, other)) / max(len(reference), 1)


def main():
    from albert_ray.inference.labeler import Labeler
    from albert_ray.io.training_files import read_examples

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="labelled test file")
    parser.add_argument("--precisions", default="float32,bfloat16,float16")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "precision_agreement.json"))
    args = parser.parse_args()
    base = Labeler.from_dir(args.model)
    examples = read_examples(
        args.data, multilabel=base.spec.task == "multilabel", scheme=base.spec.scheme, on_bad_records="skip"
    ).examples
    texts = [e.text for e in examples]
    rows, reference = [], None
    for precision in args.precisions.split(","):
        lab = Labeler.from_dir(args.model, precision=precision)
        lab.predict(texts[:64])
        began = time.time()
        predictions = lab.predict(texts)
        seconds = time.time() - began
        _, report = lab.task.report(examples, predictions, lab.spec)
        score = lab.task.dev_score(report)
        reference = reference or (predictions, score)
        rows.append(
            {
                "precision": precision,
                "texts": len(texts),
                "test_score": round(score, 4),
                "drift": round(score - reference[1], 4),
                "agreement_with_float32": round(agreement(lab.spec.task, reference[0], predictions), 4),
                "rows_per_second": round(len(texts) / seconds, 1),
            }
        )
        print(rows[-1], flush=True)
    print(f"\n{'precision':<10} {'test score':>10} {'drift':>8} {'agreement with fp32':>20} {'rows/s':>8}")
    for r in rows:
        print(
            f"{r['precision']:<10} {r['test_score']:>10} {r['drift']:>8} {r['agreement_with_float32']:>20} "
            f"{r['rows_per_second']:>8}"
        )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(
        json.dumps(
            {
                "machine": machine_record(),
                "model": args.model,
                "data": args.data,
                "task": base.spec.task,
                "results": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
