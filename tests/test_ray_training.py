"""The Ray Train path on the bundled sample: same loop, real TensorflowTrainer, local Ray."""

import json

import pytest

from albert_ray.jobconfig import load_job_config
from albert_ray.predict import Labeler
from albert_ray.training import train, train_in_process


@pytest.mark.slow
@pytest.mark.ci
def test_ray_train_one_worker_matches_in_process_run(tmp_path, local_ray):
    overrides = ["train.epochs=2", "data.max_train_examples=200", "train.learning_rate=3e-3", "train.log_every=0"]
    ray_job = load_job_config("jobs/configs/sample_ner.yaml", [f"output_dir={tmp_path / 'ray'}", *overrides])
    summary = train(ray_job)
    local_job = load_job_config("jobs/configs/sample_ner.yaml", [f"output_dir={tmp_path / 'local'}", *overrides])
    reference = train_in_process(local_job)
    # one worker under MultiWorkerMirroredStrategy = the default strategy, bit for bit on CPU
    assert summary["best_dev_score"] == pytest.approx(reference["best_dev_score"], abs=1e-6)
    assert [h["train_loss"] for h in summary["history"]] == pytest.approx(
        [h["train_loss"] for h in reference["history"]], rel=1e-5)
    state = json.loads((tmp_path / "ray" / "sample_ner" / "model" / "train_state.json").read_text())
    assert state["final"] and state["step"] == 2 * 7  # 200 rows / batch 32 = 7 steps per epoch
    # Ray Train kept a checkpoint per epoch plus the final one in its storage folder
    checkpoints = [p for p in (tmp_path / "ray" / "ray" / "sample_ner").glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 3
    texts = ["张伟昨天在北京会见了新华社代表团。"]
    a = Labeler.from_dir(summary["model_dir"]).predict(texts)
    b = Labeler.from_dir(reference["model_dir"]).predict(texts)
    assert [(e["start"], e["end"], e["label"]) for e in a[0]["entities"]] == \
           [(e["start"], e["end"], e["label"]) for e in b[0]["entities"]]
