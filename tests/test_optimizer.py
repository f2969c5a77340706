"""The optimizer both training loops share: the warmup-then-linear-decay schedule is one real
class (so Keras can serialise it and isinstance holds), and the resume state round-trips."""

import numpy as np
import tensorflow as tf
from tensorflow import keras

from albert_ray.runtime.loop import TrainState, restore_resume_state, save_resume_state
from albert_ray.runtime.optimizer import WarmupLinearDecay, adamw, optimizer_state


def test_the_schedule_warms_up_then_decays_to_zero_and_is_one_class():
    first, second = WarmupLinearDecay(1e-3, 10, 110), WarmupLinearDecay(2e-3, 0, 5)
    assert type(first) is type(second) and isinstance(first, keras.optimizers.schedules.LearningRateSchedule)
    rates = [float(first(step)) for step in (0, 5, 10, 60, 110, 200)]
    assert np.allclose(rates, [0.0, 5e-4, 1e-3, 5e-4, 0.0, 0.0])
    assert first.get_config() == {"peak": 1e-3, "warmup": 10.0, "total": 110.0}


def test_the_schedule_follows_variables_changed_mid_run():
    total = tf.Variable(100.0)
    schedule = WarmupLinearDecay(1.0, tf.Variable(0.0), total)
    assert np.isclose(float(schedule(50)), 0.5)
    total.assign(60.0)  # a wall-clock budget shortened the run
    assert np.isclose(float(schedule(50)), 10 / 60)


def test_resume_state_round_trips_the_loop_state_and_every_optimizer_variable(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = adamw(model, WarmupLinearDecay(1e-2, 1, 10), 0.01, ("bias",), "float32")
    x = tf.ones((4, 3))
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x) ** 2)
        optimizer.apply_gradients(
            zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        )
    state = TrainState(epoch=2, batch=5, best_score=0.75, history=[{"epoch": 1, "train_loss": 0.5}])
    save_resume_state(tmp_path, state, optimizer)

    fresh = adamw(model, WarmupLinearDecay(1e-2, 1, 10), 0.01, ("bias",), "float32")
    restored = restore_resume_state(tmp_path, fresh)
    assert restored == state
    assert int(fresh.iterations.numpy()) == 3
    for mine, theirs in zip(optimizer_state(fresh), optimizer_state(optimizer), strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.npz", "train_state.json"]
