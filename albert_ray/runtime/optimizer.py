"""The optimizer both training loops use (fine-tuning and pre-training): AdamW with linear
warmup and linear decay, loss scaling under float16, and the variables a resume restores.

This module imports TensorFlow: workers import it, the driver does not.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf
from tensorflow import keras


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``peak`` over ``warmup`` steps, then linear decay to 0 at ``total``.

    ``warmup`` and ``total`` may be ``tf.Variable``s: pre-training's wall-clock budget shortens
    both mid-run, and the schedule reads them at every step."""

    def __init__(self, peak: float, warmup, total):
        super().__init__()
        self.peak, self.warmup, self.total = peak, warmup, total

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        end, start = tf.cast(self.total, tf.float32), tf.cast(self.warmup, tf.float32)
        warm = self.peak * step / tf.maximum(1.0, start)
        decay = self.peak * tf.maximum(0.0, (end - step) / tf.maximum(1.0, end - start))
        return tf.where(step < start, warm, decay)

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "warmup": float(tf.cast(self.warmup, tf.float32).numpy()),
            "total": float(tf.cast(self.total, tf.float32).numpy()),
        }


def adamw(model, schedule: WarmupLinearDecay, weight_decay: float, no_decay: Sequence[str], policy: str):
    """AdamW on ``schedule`` (epsilon 1e-6 as BERT and ALBERT), without weight decay on the
    variables whose names match ``no_decay``, wrapped for dynamic loss scaling under
    ``mixed_float16`` (bfloat16 has float32's range: no scaling), built for ``model``'s variables.
    Call under the distribution strategy's scope."""
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay, epsilon=1e-6)
    optimizer.exclude_from_weight_decay(var_names=list(no_decay))
    if policy == "mixed_float16":
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return optimizer


def optimizer_state(optimizer) -> list:
    """The variables a resume restores: the optimizer's slots and step, plus, under mixed precision,
    the dynamic loss scale and its good-step counter (``LossScaleOptimizer.variables`` leaves them
    out, and restarting at the initial scale would skip updates the uninterrupted run made)."""
    scale = getattr(optimizer, "_loss_scale", None)
    extra = [scale._current_loss_scale, scale._counter] if hasattr(scale, "_current_loss_scale") else []
    return list(optimizer.variables) + extra


def current_learning_rate(optimizer) -> float:
    """The optimizer's current rate: its schedule at the current step, read through the
    distribution strategy (under MultiWorkerMirroredStrategy the rate is a MirroredVariable,
    which ``float()`` refuses)."""
    rate = optimizer.learning_rate
    if callable(rate):
        rate = rate(optimizer.iterations)
    return float(tf.convert_to_tensor(rate).numpy())
