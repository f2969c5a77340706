"""Training throughput: plain Keras ``model.fit`` in one process vs this project's worker loop
in one process vs Ray Train with 1 and 2 workers — same data, same ALBERT-tiny shape.

Data: the first N sentences of CLUENER train (``../shared/corpora``), else the bundled sample.
Prints a table and writes benchmarks/results/train_throughput.json.
With ``--repeat N`` every run is measured N times and the table shows the median (this 2-core
machine varies by +-10 % between identical runs); the JSON keeps every measurement.
usage: python benchmarks/train_throughput.py [--rows 2000] [--corpora ../shared/corpora] [--repeat 3]
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from albert_ray.runtime.hardware import machine_record  # noqa: E402

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def job_for(args, out, *extra):
    from albert_ray.finetune.config import load_job_config

    corpora = Path(args.corpora)
    if (corpora / "cluener").is_dir():
        data = [
            f"data.train={corpora / 'cluener' / 'cluener.train'}",
            "data.on_bad_records=skip",
            f"model.encoder_config={corpora / 'albert_zh' / 'albert_config_tiny.json'}",
            f"model.vocab={corpora / 'albert_zh' / 'vocab.txt'}",
        ]
    else:
        data = ["data.train=data/ner_sample.train.bio", "model.vocab=auto"]
    return load_job_config(
        ROOT / "jobs/configs/sample_ner.yaml",
        [
            f"output_dir={out}",
            *data,
            "data.dev=",
            "data.test=",
            f"data.max_train_examples={args.rows}",
            "data.dev_fraction=0.01",
            "data.max_eval_examples=20",
            "train.epochs=2",
            "train.log_every=0",
            "model.max_len=128",
            "train.batch_size=32",
            *extra,
        ],
    )


def keras_fit(args, out, bucketed: bool):
    """Plain model.fit on numpy arrays padded to 128 (the reference's way), or on length-bucketed
    tf.data batches with autotune off."""
    import numpy as np
    import tensorflow as tf

    import albert_ray  # noqa: F401
    from albert_ray.finetune.driver import featurize, prepare
    from albert_ray.io.batching import make_batches
    from albert_ray.model.encoder import initialize_encoder
    from albert_ray.tasks.registry import build_task_model, task_for

    job = job_for(args, out)
    prep = prepare(job)
    rows = featurize(prep.spec, prep.vocab, prep.train)
    model = build_task_model(prep.spec)
    initialize_encoder(model, prep.spec.encoder_config())
    task = task_for(prep.spec)
    crf_loss = task.loss(model)
    model.compile(optimizer=tf.keras.optimizers.AdamW(1e-4), loss=lambda y, p: tf.reduce_mean(crf_loss(y, p)))
    if bucketed:
        batches = make_batches(rows, 32, 0, 0, task.pad_targets)
        ds = tf.data.Dataset.from_generator(
            lambda: ((({"Input-Token": a, "Input-Segment": np.zeros_like(a)}, b)) for a, b in batches),
            output_signature=(
                {
                    "Input-Token": tf.TensorSpec([None, None], tf.int32),
                    "Input-Segment": tf.TensorSpec([None, None], tf.int32),
                },
                tf.TensorSpec([None, None], tf.int32),
            ),
        )
        options = tf.data.Options()
        options.autotune.enabled = False  # autotune stalls ~10 s when an epoch's iterator is torn down
        ds = ds.with_options(options)
        model.fit(ds, epochs=1, verbose=0)  # warm-up epoch (tracing)
        began = time.time()
        model.fit(ds, epochs=1, verbose=0)
    else:
        ids = np.zeros((len(rows), 128), np.int32)
        y = np.full((len(rows), 128), -1, np.int32)
        for i, r in enumerate(rows):
            ids[i, : len(r["token_ids"])] = r["token_ids"]
            y[i, : len(r["target"])] = r["target"]
        model.fit([ids, np.zeros_like(ids)], y, batch_size=32, epochs=1, verbose=0)
        began = time.time()
        model.fit([ids, np.zeros_like(ids)], y, batch_size=32, epochs=1, verbose=0)
    return len(rows) / (time.time() - began), len(rows)


def loop(args, out, use_ray: bool, workers: int = 1, bucketed: bool = True):
    from albert_ray.finetune.driver import train, train_in_process

    extra = [f"train.num_workers={workers}", f"train.bucket_by_length={str(bucketed).lower()}"]
    if workers > 1:
        extra.append("train.cpus_per_worker=0.5")
    job = job_for(args, out / f"{use_ray}-{workers}-{bucketed}", *extra)
    began = time.time()
    summary = (train if use_ray else train_in_process)(job)
    wall = time.time() - began
    # epoch 2: steady state (epoch 1 includes tracing); per-worker rate x workers
    rate = summary["history"][-1]["examples_per_second"] * workers
    return rate, summary["train_examples"], wall


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"))
    parser.add_argument("--out", default="/tmp/albert_ray_bench")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    # a fresh folder per invocation: Ray Train runs resume from checkpoints of the same name, so a
    # reused folder would report the previous invocation's epochs instead of training
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    results = []

    def add(name, measure):
        runs = [measure(i) for i in range(args.repeat)]
        rates = sorted(r[0] for r in runs)
        results.append(
            {
                "run": name,
                "examples_per_second": round(statistics.median(rates), 1),
                "rows": runs[0][1],
                "all_examples_per_second": [round(r[0], 1) for r in runs],
                "wall_seconds": None if len(runs[0]) < 3 else round(statistics.median(r[2] for r in runs), 1),
            }
        )
        print(results[-1], flush=True)

    add("keras fit, padded to 128", lambda i: keras_fit(args, out / f"fit{i}", bucketed=False))
    add(
        "keras fit, length-bucketed (autotune off)",
        lambda i: keras_fit(args, out / f"fitb{i}", bucketed=True),
    )
    add("worker loop in-process, padded to 128", lambda i: loop(args, out / str(i), False, bucketed=False))
    add("worker loop in-process, bucketed", lambda i: loop(args, out / str(i), False))
    from albert_ray.runtime.attach import init_ray

    init_ray(None, num_cpus=2)
    add("Ray Train 1 worker, padded to 128", lambda i: loop(args, out / str(i), True, bucketed=False))
    add("Ray Train 1 worker, bucketed", lambda i: loop(args, out / str(i), True))
    add("Ray Train 2 workers, bucketed", lambda i: loop(args, out / str(i), True, workers=2))
    print(f"\n{'run':<46} {'ex/s':>8} {'wall s':>8}  all ex/s")
    for r in results:
        print(
            f"{r['run']:<46} {r['examples_per_second']:>8} {r['wall_seconds'] or '':>8}  {r['all_examples_per_second']}"
        )
    res = ROOT / "benchmarks" / "results"
    res.mkdir(exist_ok=True)
    (res / "train_throughput.json").write_text(
        json.dumps({"machine": machine_record(), "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
