"""Where a pre-training step's time goes, part by part, in float32 and in mixed_bfloat16: why
bfloat16 speeds up the albert-tiny shape's step 1.57x and the sample encoder's only 1.10x.

Each part is one block's worth of work at batch 32 x 128 tokens, forward and gradient, timed
alone in one process: the block's dense matmuls (Q, K, V, O and the feed-forward pair, 2-D as
the encoder runs them), the attention matmuls (scores and context), the attention softmax (plain
float32 ops) and the elementwise passes the pre-training step fuses with XLA (``albert_ray/model/fused.py``:
GELU, LayerNorm; computed in float32 whatever the inputs). Beside them two alternatives that
were tried: the softmax as one XLA pass (slower: XLA runs it on one thread), and one Q/K/V
projection against a concatenated kernel instead of three. The precisions run in turn ``--repeat`` times (a drift of
the machine's speed touches both) and each cell is the median, in ms.

usage: python benchmarks/pretrain_step_parts.py [--repeat 5] [--calls 30]
Prints a table and writes benchmarks/results/pretrain_step_parts.json.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tensorflow as tf  # noqa: E402

from albert_ray import fused  # noqa: E402
from albert_ray.model.encoder import attention_probs  # noqa: E402
from albert_ray.runtime.hardware import machine_record  # noqa: E402

BATCH, LENGTH = 32, 128
SHAPES = {
    "sample": {"hidden": 128, "heads": 4, "intermediate": 512},  # data/albert_config_sample.json
    "tiny": {"hidden": 312, "heads": 12, "intermediate": 1248},
}  # brightmart albert_config_tiny.json
PRECISIONS = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16}


def parts(shape: dict, dtype) -> dict:
    """name -> (a function of its inputs returning a scalar loss, its inputs): one block's worth."""
    h, heads, inner = shape["hidden"], shape["heads"], shape["intermediate"]
    rows, d = BATCH * LENGTH, h // heads
    g = tf.random.Generator.from_seed(0)
    x = tf.cast(g.normal([rows, h]), dtype)
    kernels = [tf.cast(g.normal([h, h]) * 0.05, dtype) for _ in range(4)]
    ffn = [tf.cast(g.normal([h, inner]) * 0.05, dtype), tf.cast(g.normal([inner, h]) * 0.05, dtype)]
    q, k, v = (tf.cast(g.normal([BATCH * heads, LENGTH, d]), dtype) for _ in range(3))
    scores = tf.cast(g.normal([BATCH * heads, LENGTH, LENGTH]), dtype)
    keep, scale = tf.ones([BATCH * heads, LENGTH]), 1.0 / d**0.5
    wide = tf.cast(g.normal([rows, inner]), dtype)
    gamma, beta = tf.ones([h]), tf.zeros([h])

    def total(y):
        return tf.reduce_sum(tf.cast(y, tf.float32)) * 1e-6

    @tf.function(jit_compile=True)
    def xla_softmax(s):  # the one XLA pass pre-training used before (fused.py's, removed)
        return tf.cast(attention_probs(s, keep, scale), s.dtype)

    return {
        "dense matmuls (Q, K, V, O, feed-forward)": (
            lambda x, *w: (
                total(tf.matmul(tf.matmul(x, w[4]), w[5])) + sum(total(tf.matmul(x, wi)) for wi in w[:4])
            ),
            [x, *kernels, *ffn],
        ),
        "attention matmuls (scores, context)": (
            lambda q, k, v: total(tf.matmul(tf.matmul(q, k, transpose_b=True), v)),
            [q, k, v],
        ),
        "attention softmax, float32 ops (encoder.py)": (
            lambda s: total(attention_probs(s, keep, scale)),
            [scores],
        ),
        "attention softmax, one XLA pass (tried)": (lambda s: total(xla_softmax(s)), [scores]),
        "GELU, XLA (fused.py)": (lambda w: total(fused.gelu_tanh(w)), [wide]),
        "LayerNorm x 2, XLA (fused.py)": (
            lambda x: 2.0 * total(fused.layer_norm(x, gamma, beta, 1e-12)),
            [x],
        ),
        "Q/K/V: three projections": (
            lambda x, a, b, c: sum(total(tf.matmul(x, w)) for w in (a, b, c)),
            [x, *kernels[:3]],
        ),
        "Q/K/V: one concatenated": (
            lambda x, a, b, c: total(tf.matmul(x, tf.concat([a, b, c], axis=1))),
            [x, *kernels[:3]],
        ),
    }


def timed(loss_fn, inputs: list, calls: int) -> float:
    """ms per call of the loss and its gradient with respect to every input."""

    @tf.function
    def step(*args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            loss = loss_fn(*args)
        return loss, tape.gradient(loss, args)

    for _ in range(3):  # trace, compile, warm up
        float(step(*inputs)[0])
    began = time.perf_counter()
    for _ in range(calls):
        out = step(*inputs)
    float(out[0])
    return (time.perf_counter() - began) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "pretrain_step_parts.json"))
    args = parser.parse_args()
    rows = []
    for shape_name, shape in SHAPES.items():
        built = {p: parts(shape, dtype) for p, dtype in PRECISIONS.items()}
        times: dict = {(name, p): [] for p in PRECISIONS for name in built[p]}
        for _ in range(args.repeat):
            for name in built["float32"]:
                for p in PRECISIONS:
                    times[(name, p)].append(timed(*built[p][name], args.calls))
        for name in built["float32"]:
            f32, bf16 = (statistics.median(times[(name, p)]) for p in PRECISIONS)
            rows.append(
                {
                    "shape": shape_name,
                    "part": name,
                    "float32_ms": round(f32, 2),
                    "bfloat16_ms": round(bf16, 2),
                    "x_float32": round(f32 / bf16, 2),
                    "runs": {p: [round(t, 2) for t in times[(name, p)]] for p in PRECISIONS},
                }
            )
    print(f"{'shape':<7}{'part (one block, forward + gradient)':<44}{'float32 ms':>11}{'bf16 ms':>9}{'x':>6}")
    for r in rows:
        print(
            f"{r['shape']:<7}{r['part']:<44}{r['float32_ms']:>11.2f}{r['bfloat16_ms']:>9.2f}{r['x_float32']:>6.2f}"
        )
    Path(args.output).write_text(
        json.dumps(
            {
                "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                **machine_record(),
                "batch": BATCH,
                "length": LENGTH,
                "shapes": SHAPES,
                "parts": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
