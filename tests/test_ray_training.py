"""The Ray Train path on the bundled sample: same loop, real TensorflowTrainer, local Ray."""

import json
from pathlib import Path

import pytest
from test_mixed_precision import narrow_encoder

from albert_ray.finetune.config import load_job_config
from albert_ray.finetune.driver import train, train_in_process
from albert_ray.inference.labeler import Labeler


@pytest.mark.slow
@pytest.mark.ci
def test_ray_train_one_worker_matches_in_process_run(tmp_path, local_ray):
    overrides = [
        "train.epochs=2",
        "data.max_train_examples=200",
        "train.learning_rate=3e-3",
        "train.log_every=0",
    ]
    ray_job = load_job_config("jobs/configs/sample_ner.yaml", [f"output_dir={tmp_path / 'ray'}", *overrides])
    summary = train(ray_job)
    local_job = load_job_config(
        "jobs/configs/sample_ner.yaml", [f"output_dir={tmp_path / 'local'}", *overrides]
    )
    reference = train_in_process(local_job)
    # one worker under MultiWorkerMirroredStrategy = the default strategy, bit for bit on CPU
    assert summary["best_dev_score"] == pytest.approx(reference["best_dev_score"], abs=1e-6)
    assert [h["train_loss"] for h in summary["history"]] == pytest.approx(
        [h["train_loss"] for h in reference["history"]], rel=1e-5
    )
    state = json.loads((tmp_path / "ray" / "sample_ner" / "model" / "train_state.json").read_text())
    assert state["final"] and state["steps"] == 2 * 7  # 200 rows / batch 32 = 7 steps per epoch
    # Ray Train kept a checkpoint per epoch plus the final one in its storage folder
    checkpoints = [p for p in (tmp_path / "ray" / "ray" / "sample_ner").glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 3
    texts = ["张伟昨天在北京会见了新华社代表团。"]
    a = Labeler.from_dir(summary["model_dir"]).predict(texts)
    b = Labeler.from_dir(reference["model_dir"]).predict(texts)
    assert [(e["start"], e["end"], e["label"]) for e in a[0]["entities"]] == [
        (e["start"], e["end"], e["label"]) for e in b[0]["entities"]
    ]


def _weights(model_dir):
    import h5py
    import numpy as np

    out = {}
    with h5py.File(Path(model_dir) / "model.weights.h5") as f:
        f.visititems(
            lambda name, obj: out.__setitem__(name, np.array(obj)) if isinstance(obj, h5py.Dataset) else None
        )
    return out


@pytest.mark.slow
# not in CI (the same equivalence runs across nodes in test_multinode in CI)
def test_two_workers_at_batch_b_reach_the_weights_of_one_worker_at_2b(tmp_path, local_ray):
    import numpy as np

    common = [
        "data.max_train_examples=96",
        "train.epochs=1",
        "model.dropout=0",
        "train.log_every=0",
        "train.shard=deterministic",
        "train.cpus_per_worker=0.5",
        "train.learning_rate=1e-3",
        "train.lr_scaling=none",
        "train.precision=float32",  # N workers = 1 worker within 1e-4 is float32's; bfloat16 rounds the split sums
    ]
    # one worker in this process: the Ray Train run of one worker is the same bit for bit (above)
    one = train_in_process(
        load_job_config(
            "jobs/configs/sample_ner.yaml", [f"output_dir={tmp_path / 'one'}", "train.batch_size=16", *common]
        )
    )
    two = train(
        load_job_config(
            "jobs/configs/sample_ner.yaml",
            [f"output_dir={tmp_path / 'two'}", "train.batch_size=8", "train.num_workers=2", *common],
        )
    )
    assert one["steps"] == two["steps"] == 6  # 96 rows / global batch 16
    w1, w2 = _weights(one["model_dir"]), _weights(two["model_dir"])
    assert w1.keys() == w2.keys() and len(w1) > 20
    init = _weights_after_zero_steps(tmp_path, common)
    moved = max(float(np.abs(w1[k] - init[k]).max()) for k in w1)
    assert moved > 1e-3  # the weights did change...
    for k in w1:  # ...and identically, within float tolerance
        np.testing.assert_allclose(w1[k], w2[k], atol=2e-5, rtol=1e-4, err_msg=k)
    # dev metrics computed with 2 workers equal the single-worker ones on the same weights
    assert one["best_dev_score"] == pytest.approx(two["best_dev_score"], abs=0.02)


@pytest.mark.slow
# not in CI (mixed precision on one worker in CI: test_mixed_precision)
def test_mixed_precision_on_two_workers_scales_the_loss_and_updates(tmp_path, local_ray):
    import math

    import numpy as np

    common = [
        "data.max_train_examples=256",
        "train.epochs=1",
        "model.dropout=0",
        "train.log_every=0",
        "train.cpus_per_worker=0.5",
        "train.learning_rate=3e-3",
        "train.mixed_precision=true",
        "model.init=none",  # a random narrow encoder, not the bundled one
        f"model.encoder_config={narrow_encoder(tmp_path)}",
    ]
    two = train(
        load_job_config(
            "jobs/configs/sample_ner.yaml",
            [f"output_dir={tmp_path / 'two'}", "train.batch_size=16", "train.num_workers=2", *common],
        )
    )
    last = two["history"][-1]
    assert two["steps"] == 8  # 256 rows / (16 x 2 workers)
    # overflowing updates are skipped on every worker alike (the check runs on all-reduced
    # gradients) and each halves the scale from 2**15
    assert last["skipped_steps"] == round(math.log2(2.0**15 / last["loss_scale"]))
    assert 0 < last["skipped_steps"] < 8 and math.isfinite(last["train_loss"])
    w = _weights(two["model_dir"])
    init = _weights_after_zero_steps(tmp_path, common)
    assert {v.dtype for v in w.values()} == {np.dtype("float32")}  # float32 master weights saved
    assert max(float(np.abs(w[k] - init[k]).max()) for k in w) > 1e-3  # the applied updates moved them


@pytest.mark.slow
@pytest.mark.ci
def test_every_row_reaches_exactly_one_worker(local_ray):
    """Ray Train's own split (``streaming_split(n, equal=True)``) drops up to n - 1 rows without a
    word (7 rows on 2 workers: 6 arrive); ours hands each row to one worker, shards within a row."""
    import ray

    from albert_ray.runtime.attach import every_row_split

    for rows, blocks, world in ((7, 1, 2), (1001, 10, 3), (5, 5, 1)):
        ds = ray.data.range(rows, override_num_blocks=blocks)
        shards = every_row_split(ds, world, "ids").configure({"train": ds}, world)
        got = [[r["id"] for r in shard["train"].iter_rows()] for shard in shards]
        assert sorted(sum(got, [])) == list(range(rows)), (rows, blocks, world)
        assert sorted(map(len, got)) == [rows // world + (i >= world - rows % world) for i in range(world)]
    with pytest.raises(ValueError, match="^ids: cut for 2 workers, started with 3$"):
        every_row_split(ds, 2, "ids").configure({"train": ds}, 3)


def _weights_after_zero_steps(tmp_path, common):
    job = load_job_config("jobs/configs/sample_ner.yaml", [f"output_dir={tmp_path / 'zero'}", *common])
    return _initial_weights(job, tmp_path)


def _train_worker_pids():
    """The Ray Train workers of this test process's own Ray (its raylet is our child), never those
    of another run on the machine: a second test run beside this one lost its workers to it."""
    import os

    from albert_ray.runtime.localcluster import descendants

    pids = []
    for pid in descendants(os.getpid()):
        try:
            if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            pass
    return pids


def kill_workers_once_checkpointed(snapshot: Path) -> list[int]:
    """SIGKILL this process's Ray Train workers (in a thread) once Ray Train's controller has
    registered a checkpoint in ``snapshot`` (it collects reports by polling); the list fills with
    the PIDs killed."""
    import json
    import os
    import signal
    import threading
    import time

    killed: list[int] = []

    def killer():
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                registered = (
                    json.loads(snapshot.read_text()).get("checkpoint_results") if snapshot.exists() else None
                )
            except ValueError:  # being written
                registered = None
            if registered:
                for pid in _train_worker_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return
            time.sleep(0.05)

    threading.Thread(target=killer, daemon=True).start()
    return killed


@pytest.mark.slow  # not in CI: test_faults' dead-worker test resumes from a checkpoint there (~75 s each)
def test_killed_worker_resumes_from_checkpoint_not_from_scratch(tmp_path, local_ray):
    job = load_job_config(
        "jobs/configs/sample_ner.yaml",
        [
            f"output_dir={tmp_path}",
            "data.max_train_examples=400",
            "train.batch_size=8",
            "train.epochs=4",
            "train.checkpoint_every_steps=10",
            "train.max_failures=1",
            "train.log_every=0",
            "model.max_len=64",
        ],
    )
    storage = tmp_path / "ray" / job.name
    killed = kill_workers_once_checkpointed(storage / "checkpoint_manager_snapshot.json")
    summary = train(job)
    assert killed, "no training worker was found to kill"
    assert len(summary["resumes"]) == 1
    resumed = summary["resumes"][0]
    assert resumed["step"] >= 10 and resumed["step"] % 10 == 0  # from a step checkpoint, not from scratch
    # every optimizer step ran exactly once overall: 4 epochs x 50 steps
    assert summary["steps"] == 200 and len(summary["history"]) == 4
    assert summary["metrics"]["micro avg"]["f1-score"] > 0.2


@pytest.mark.slow
def test_rerun_with_the_same_name_resumes(tmp_path, local_ray):
    base = [f"output_dir={tmp_path}", "data.max_train_examples=200", "train.log_every=0", "train.patience=5"]
    first = train(load_job_config("jobs/configs/sample_ner.yaml", [*base, "train.epochs=2"]))
    assert first["steps"] == 14 and first["resumes"] == []
    second = train(load_job_config("jobs/configs/sample_ner.yaml", [*base, "train.epochs=3"]))
    assert [r["epoch"] for r in second["resumes"]] == [2]
    assert second["steps"] == 21 and len(second["history"]) == 3


@pytest.mark.slow
@pytest.mark.corpora
def test_xlarge_two_steps_on_two_cpu_workers(corpora, tmp_path, local_ray):
    import numpy as np

    common = [
        f"output_dir={tmp_path}",
        "model.init=none",  # the xlarge shape from random weights
        f"model.encoder_config={corpora / 'albert_zh' / 'albert_config_xlarge.json'}",
        f"model.vocab={corpora / 'albert_zh' / 'vocab.txt'}",
        "model.max_len=32",
        "data.max_train_examples=4",
        "data.max_eval_examples=4",
        "train.epochs=1",
        "train.batch_size=1",
        "train.num_workers=2",
        "train.cpus_per_worker=0.5",
        "train.shard=deterministic",
        "train.log_every=0",
        "model.dropout=0",
    ]
    job = load_job_config("jobs/configs/sample_classify.yaml", common)
    summary = train(job)
    assert summary["steps"] == 2  # 4 rows / (1 per worker x 2 workers)
    epoch = summary["history"][0]
    assert np.isfinite(epoch["train_loss"]) and epoch["peak_rss_mib"] > 800  # 54 M parameters + AdamW
    print(f"xlarge: loss {epoch['train_loss']:.4f}, worker peak RSS {epoch['peak_rss_mib']:.0f} MiB")
    init = _initial_weights(job, tmp_path)
    trained = _weights(summary["model_dir"])
    changed = [k for k in trained if not np.array_equal(trained[k], init[k])]
    assert len(changed) > 10


def _initial_weights(job, tmp_path):
    from albert_ray import modeldir
    from albert_ray.finetune.driver import prepare

    prep = prepare(job)
    modeldir.create(tmp_path / "init", prep.spec, prep.vocab, seed=job.train.seed)
    return _weights(tmp_path / "init")


def interrupt_once_checkpointed(cmd: list, err: Path, snapshot: Path, ready=lambda text: True) -> int:
    """Run ``cmd`` (stderr to ``err``), press Ctrl-C once Ray Train's controller has taken a
    checkpoint in (it polls for them; ``snapshot`` is its record) and ``ready(stderr so far)``;
    returns the exit status."""
    import os
    import signal
    import subprocess
    import time

    def registered() -> bool:
        try:
            return (
                bool(json.loads(snapshot.read_text()).get("checkpoint_results"))
                if snapshot.exists()
                else False
            )
        except ValueError:  # being written
            return False

    with open(err, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (ready(err.read_text()) and registered()) and time.time() < deadline:
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
# not in CI (~95 s): the labeling Ctrl-C test in CI covers the interrupt line and resume
def test_ctrl_c_on_train_is_one_line_and_the_same_command_resumes(tmp_path):
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "albert_ray.cli",
        "train",
        "--config",
        "jobs/configs/sample_ner.yaml",
        f"output_dir={tmp_path}",
        "model.max_len=64",
        "train.epochs=30",
        "data.max_train_examples=200",
        "train.log_every=0",
    ]
    err = tmp_path / "err.txt"
    rc = interrupt_once_checkpointed(
        cmd,
        err,
        tmp_path / "ray" / "sample_ner" / "checkpoint_manager_snapshot.json",
        lambda text: "epoch 2/30" in text,
    )
    lines = err.read_text().splitlines()
    assert rc == 130
    assert lines[-1] == (
        f"albert-ray train: interrupted: checkpoints so far are in {tmp_path}/ray/sample_ner; run "
        f"the same command again to resume from the latest"
    )
    assert not any("Traceback" in line for line in lines[-20:])
    again = subprocess.run(
        cmd[:-3] + ["train.epochs=3", "data.max_train_examples=200", "train.log_every=0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = [line for line in again.stderr.splitlines() if "resumed from checkpoint at epoch" in line]
    assert len(resumed) == 1 and "epoch 1, batch 0" not in resumed[0]
