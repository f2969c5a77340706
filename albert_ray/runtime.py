"""Attaching to Ray: one place for the address rules and the workers' environment."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# Workers import TensorFlow before any project code runs; Ray's own late setting of
# TF_USE_LEGACY_KERAS comes too late (symptom: "PerReplica ... unsupported type"), so it goes
# into the runtime environment.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Attach to Ray.

    * ``address`` given: connect to it (``auto``, ``ray://host:10001``, ``127.0.0.1:6379``).
    * inside ``ray job submit`` (``$RAY_ADDRESS`` set): plain ``ray.init()``; the job's
      runtime_env already carries ``WORKER_ENV``.
    * otherwise: start a new local Ray for this process (never attach to a cluster by accident),
      dashboard on 127.0.0.1.
    """
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, runtime_env={"env_vars": WORKER_ENV})
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1",
                 runtime_env={"env_vars": WORKER_ENV}, configure_logging=False)
    log.info("Ray resources: %s", ray.cluster_resources())
