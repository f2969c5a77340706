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
    """A Ray instance of this test module's own (never an already running cluster). Per module,
    so no other module's command-line runs (which start their own local Ray) meet two Ray
    instances on the machine: Ray Train's placement-group cleaner then fails with "Found multiple
    active Ray instances"."""
    import ray

    from albert_ray.runtime import WORKER_ENV

    ray.init(address="local", num_cpus=2, dashboard_host="127.0.0.1", runtime_env={"env_vars": WORKER_ENV},
             configure_logging=False)
    yield ray
    ray.shutdown()
