import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the tests' own Ray on 127.0.0.1 only
# folders fetched from URIs (models, checkpoints) go to the session's own cache, not ~/.cache
os.environ.setdefault("ALBERT_RAY_CACHE", __import__("tempfile").mkdtemp(prefix="albert-ray-cache-"))

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPORA = Path(os.environ.get("ALBERT_RAY_CORPORA", ROOT.parent / "shared" / "corpora"))


@pytest.fixture(scope="session")
def corpora() -> Path:
    if not CORPORA.is_dir():
        pytest.skip(f"real corpora not present at {CORPORA}")
    return CORPORA


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance of this test module's own (never an already running cluster), started as
    the CLI starts its local Ray. Per module: a module's command-line runs start their own."""
    import ray

    from albert_ray.runtime.attach import WORKER_ENV, start_local_ray

    start_local_ray(dict(WORKER_ENV), num_cpus=2, dashboard=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_ner_model(tmp_path_factory) -> str:
    """One small NER model for the session (1 epoch on 64 sample rows, max_len 64), trained in
    this process: the label, object-store, multi-node and fault tests only need *a* model."""
    from albert_ray.finetune.config import load_job_config
    from albert_ray.finetune.driver import train_in_process

    out = tmp_path_factory.mktemp("small_ner")
    return train_in_process(
        load_job_config(
            "jobs/configs/sample_ner.yaml",
            [
                f"output_dir={out}",
                "train.epochs=1",
                "model.max_len=64",
                "data.max_train_examples=64",
                "train.log_every=0",
            ],
        )
    )["model_dir"]
