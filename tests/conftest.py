import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the tests' own Ray on 127.0.0.1 only

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

    from albert_ray.runtime import WORKER_ENV, start_local_ray

    start_local_ray(dict(WORKER_ENV), num_cpus=2, dashboard=True)
    yield ray
    ray.shutdown()
