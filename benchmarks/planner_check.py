"""Check the planner's activation term against measured memory on CPU, for small shapes.

For each shape, one process trains a few steps at batch 1 and then at batch B; the growth of
peak RSS between the two is the memory of (B - 1) examples' activations, compared with the
planner's estimate. Prints a table and writes benchmarks/results/planner_check.json
(planner_check_mixed.json with --mixed-precision: the model built under mixed_float16, trained
through a LossScaleOptimizer).
usage: python benchmarks/planner_check.py [--mixed-precision]
"""

import json
import os
import subprocess
import sys
from pathlib import Path

SHAPES = [  # hidden, layers, heads, intermediate, seq_len, batch
    (128, 4, 4, 512, 128, 64),
    (312, 4, 12, 1248, 128, 32),
    (256, 6, 8, 1024, 256, 16),
]

CHILD = r"""
import json, os, resource, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import albert_ray, numpy as np, tensorflow as tf
from tensorflow import keras
from albert_ray.model.encoder_config import EncoderConfig
from albert_ray.spec import ModelSpec
from albert_ray.tasks.registry import build_task_model, task_for
from albert_ray.model.encoder import dtype_policy
h, layers, heads, inter, seq, batch = map(int, sys.argv[1:7])
mixed = sys.argv[7] == "1"
cfg = dict(vocab_size=8000, hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter,
           embedding_size=128, max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, ln_type="postln", layout="albert_brightmart")
spec = ModelSpec(task="classify", labels=("a", "b"), encoder=cfg, max_len=seq, dropout=0.0)
with dtype_policy("mixed_float16" if mixed else "float32"):
    model = build_task_model(spec)
opt = keras.optimizers.AdamW(1e-4)
if mixed:
    opt = keras.mixed_precision.LossScaleOptimizer(opt)
loss_fn = task_for(spec).loss(model)
@tf.function(reduce_retracing=True)
def step(ids, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(loss_fn(y, model([ids, tf.zeros_like(ids)], training=True)))
        scaled = opt.get_scaled_loss(loss) if mixed else loss
    grads = tape.gradient(scaled, model.trainable_variables)
    grads = opt.get_unscaled_gradients(grads) if mixed else grads
    opt.apply_gradients(zip(grads, model.trainable_variables))
def run(b):
    ids = np.random.randint(5, 8000, size=(b, seq)).astype("int32")
    for _ in range(3):
        step(tf.constant(ids), tf.constant(np.zeros(b, "int32")))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base = run(1)
peak = run(batch)
print(json.dumps({"measured": peak - base}))
"""


def main():
    mixed = "--mixed-precision" in sys.argv[1:]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from albert_ray.model.encoder_config import EncoderConfig
    from albert_ray.model.memory_planner import estimate
    from albert_ray.runtime.hardware import machine_record

    rows = []
    for h, layers, heads, inter, seq, batch in SHAPES:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                *map(str, (h, layers, heads, inter, seq, batch)),
                "1" if mixed else "0",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        measured = json.loads(out.stdout.strip().splitlines()[-1])["measured"]
        cfg = EncoderConfig.from_dict(
            dict(
                vocab_size=8000,
                hidden_size=h,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=inter,
                embedding_size=128,
                ln_type="postln",
            )
        )
        predicted = (batch - 1) * estimate(cfg, seq, mixed_precision=mixed).activation_bytes_per_example
        rows.append(
            {
                "precision": "mixed_float16" if mixed else "float32",
                "hidden": h,
                "layers": layers,
                "heads": heads,
                "intermediate": inter,
                "seq_len": seq,
                "batch": batch,
                "measured_mib": round(measured / 2**20, 1),
                "predicted_mib": round(predicted / 2**20, 1),
                "ratio": round(predicted / measured, 3),
            }
        )
        print(rows[-1], flush=True)
    print(f"\n{'shape':<28} {'measured MiB':>13} {'planner MiB':>12} {'ratio':>6}")
    for r in rows:
        shape = f"H{r['hidden']} L{r['layers']} A{r['heads']} T{r['seq_len']} B{r['batch']}"
        print(f"{shape:<28} {r['measured_mib']:>13} {r['predicted_mib']:>12} {r['ratio']:>6}")
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / ("planner_check_mixed.json" if mixed else "planner_check.json")).write_text(
        json.dumps({"machine": machine_record(), "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
