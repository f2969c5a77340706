"""Attaching to Ray: one place for the address rules and the workers' environment."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
import signal
import sys
import tempfile
import time

import albert_ray  # noqa: F401 TF_USE_LEGACY_KERAS before TensorFlow
from albert_ray import paths
from albert_ray.errors import environment_fault, first_line, worker_user_error
from albert_ray.runtime.localcluster import free_port
from albert_ray.runtime.quiet import NOISE, SETUP_HOOK, VERBOSE_ENV, filter_ray_logs, quiet_ray_data

log = logging.getLogger(__name__)

# Workers import TensorFlow before any project code runs; Ray's own late setting of
# TF_USE_LEGACY_KERAS comes too late (symptom: "PerReplica ... unsupported type"), so it goes
# into the runtime environment.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what is kept and how to resume."""


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True) -> None:
    """Attach to Ray.

    * ``address`` given: connect to it (``auto``, ``ray://host:10001``, ``127.0.0.1:6379``).
    * inside ``ray job submit`` (``$RAY_ADDRESS`` set): plain ``ray.init()``; the job's
      runtime_env already carries ``WORKER_ENV``.
    * otherwise: start a new local Ray for this process (never attach to a cluster by accident),
      every server on 127.0.0.1 (``localcluster.LOOPBACK_ENV``), dashboard on 127.0.0.1 (or none
      with ``dashboard=False``: starts faster, and a batch job that is not submitted needs no job
      server).
    """
    if not address and not os.environ.get("RAY_ADDRESS"):
        from albert_ray.runtime.localcluster import LOOPBACK_ENV

        os.environ.update(LOOPBACK_ENV)  # before Ray is imported: it reads it into a constant
    import ray

    if ray.is_initialized():
        return

    env = {
        **WORKER_ENV,
        VERBOSE_ENV: os.environ.get(VERBOSE_ENV, "0"),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", WORKER_ENV["TF_CPP_MIN_LOG_LEVEL"]),
    }
    if address:
        ray.init(address=address, runtime_env=runtime_env(env))
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        start_local_ray(env, num_cpus, dashboard)

    filter_ray_logs()
    quiet_ray_data()
    log.info("Ray resources: %s", ray.cluster_resources())


def runtime_env(env: dict) -> dict:
    """The runtime environment of the Ray this process starts or joins: ``env`` for every worker,
    and the setup hook that keeps Ray Train's tracebacks of user errors out of the output."""

    return {"env_vars": env, "worker_process_setup_hook": SETUP_HOOK}


def start_local_ray(env: dict, num_cpus: int | None, dashboard: bool) -> None:
    """A new local Ray whose GCS port is chosen here, so that its workers can be told its address.

    Ray's own state-API calls inside workers (Ray Train's placement-group cleaner asks whether
    the run's controller is alive) look for "the" Ray of the machine when ``RAY_ADDRESS`` is
    unset, and with a second Ray running (``albert-ray cluster start``) they fail with
    ``ConnectionError: Found multiple active Ray instances``: the workers get this Ray's address.
    """
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case Ray was imported before (see LOOPBACK_ENV)
    port = free_port()
    env = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    saved = os.environ.get(ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE)
    os.environ[ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE] = str(port)  # read by the head node it starts
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            dashboard_host="127.0.0.1",
            include_dashboard=dashboard,
            runtime_env=runtime_env(env),
            configure_logging=False,
        )
    finally:
        if saved is None:
            os.environ.pop(ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE, None)
        else:
            os.environ[ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE] = saved


def alive_nodes() -> int:
    """Nodes of the attached Ray cluster that are alive."""
    return len(ray_nodes_alive())


def require_shared_storage(path: str | None, what: str) -> None:
    """On a multi-node cluster a default local path would land on one node's disk only.

    Raises:
        ValueError: more than one node and no explicit shared location.
    """
    if path is None and alive_nodes() > 1:
        raise ValueError(
            f"{what} is not set and the cluster has {alive_nodes()} nodes: set it to shared storage "
            f"(an NFS path mounted on every node, or s3://bucket/prefix), not a node's local disk"
        )


def task_nodes() -> list[dict]:
    """The alive nodes that can run tasks (some CPU or GPU): a head started with ``num-cpus: 0``
    runs none, so what it sees does not matter."""
    import ray

    return [
        n
        for n in ray.nodes()
        if n.get("Alive")
        and (n.get("Resources", {}).get("CPU", 0) > 0 or n.get("Resources", {}).get("GPU", 0) > 0)
    ]


def _sees(files: list[tuple[str, int | None]]) -> int | None:
    """The index of the first local path this node does not see as the driver does (``size``
    None: any file or folder; else a file of that size), or None."""
    for i, (path, size) in enumerate(files):
        if size is None and not os.path.exists(path):
            return i
        if size is not None and (not os.path.isfile(path) or os.path.getsize(path) != size):
            return i
    return None


def require_visible(
    what: str, role: str, files: list[tuple[str, int | None]], shown: str | None = None
) -> None:
    """On a multi-node cluster, refuse local paths a node that runs tasks cannot see, before any
    task reads them: one small task per such node (pinned to it) looks for each path.

    Args:
        what: the setting, as the user knows it (``input``, ``output``, ``data.train``).
        role: who needs it on every node (``read tasks read it``).
        files: ``(local path, size)``; size None for a folder or a marker the driver wrote.
        shown: the path to name in the message instead (the folder of a marker).

    Raises:
        ValueError: one line naming the path, the node and the fix.
    """
    files = [(os.path.abspath(p), size) for p, size in files if "://" not in p]
    if not files or alive_nodes() < 2:
        return
    nodes = task_nodes()
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check = ray.remote(num_cpus=0, max_retries=0)(_sees)
    refs = [
        check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            files
        )
        for n in nodes
    ]
    for node, missing in zip(nodes, ray.get(refs)):
        if missing is not None:
            raise ValueError(
                f"{what} {shown or files[missing][0]} is a local path that node {node['NodeManagerAddress']} "
                f"({node['NodeID'][:8]}) of this {len(ray_nodes_alive())}-node cluster cannot see, and "
                f"{role} on every node: give a URI (s3://bucket/...) or a path on a filesystem every "
                f"node mounts"
            )


def require_visible_folder(what: str, role: str, folder: str) -> None:
    """:func:`require_visible` for a local folder the job writes: the driver writes a marker
    file into it and every node that runs tasks must see the marker (a folder of the same name
    on each node's own disk is not enough: the output would be split across nodes)."""
    if "://" in folder or alive_nodes() < 2:
        return
    os.makedirs(folder, exist_ok=True)
    marker = os.path.join(folder, f".albert-ray-visible-{os.getpid()}-{time.time_ns() % 10**6}")
    with open(marker, "wb"):
        pass
    try:
        require_visible(what, role, [(marker, 0)], shown=folder)
    finally:
        os.unlink(marker)


def ray_nodes_alive() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def require_read_room(num_workers: int, cpus_per_worker: float, read_cpus: float, what: str) -> None:
    """Ray Data's read / featurise tasks run while the training workers hold their CPUs, so they
    need CPUs the workers leave free, or the run waits forever ("Cluster resources are not enough
    to run any task"; measured: 2 workers x 0.9 CPU on 2 CPUs).

    Raises:
        ValueError: one line with the numbers and what to change.
    """
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    taken = num_workers * cpus_per_worker
    if taken + read_cpus > total:
        raise ValueError(
            f"train.num_workers={num_workers} x train.cpus_per_worker={cpus_per_worker:g} = "
            f"{taken:g} of the cluster's {total:g} CPUs leaves less than {read_cpus:g} for reading "
            f"{what}: lower train.cpus_per_worker (TensorFlow's threads are set apart, by "
            f"train.tf_threads)"
        )


def every_row_split(ds, workers: int, what: str, require=None):
    """Materialize ``ds`` and cut it into ``workers`` shards that differ by at most one row;
    returns the Ray Train ``DataConfig`` that hands shard i to rank i (the trainer's ``datasets``
    only name the dataset then). ``require(shards)``, if given, may refuse the shards (with a
    one-line error) before any worker starts.

    Ray Train's own split, ``streaming_split(workers, equal=True)``
    (``ray/train/_internal/data_config.py``), drops the rows that do not divide evenly, up to
    workers - 1 of them, without a word; ``equal=False`` keeps them but deals whole blocks, so one
    worker may get everything. The cut runs here in the driver, before the workers hold their
    CPUs: it starts Ray tasks, which would wait for ever beside workers that leave too little
    CPU free. The loops agree on the steps of an epoch themselves. Materialized, the rows are
    read and featurised once: a restarted worker group reads the same shards."""
    from ray.train import DataConfig

    began = time.time()
    ds = ds.materialize()
    rows = ds.count()
    cuts = [rows * i // workers for i in range(1, workers)]
    shards = ds.split_at_indices(cuts) if cuts else [ds]
    log.info(
        "%s: %s rows ready in %.1f s, %s to each of %d workers",
        what,
        f"{rows:,}",
        time.time() - began,
        "/".join(sorted({f"{s.count():,}" for s in shards})),
        workers,
    )
    if require is not None:
        require(shards)

    class EveryRowSplit(DataConfig):
        def configure(self, datasets, world_size, worker_handles=None, worker_node_ids=None, **kwargs):
            if world_size != len(shards):  # not elastic: the shards were cut for the configured workers
                raise ValueError(f"{what}: cut for {len(shards)} workers, started with {world_size}")
            return [{name: shard.iterator() for name in datasets} for shard in shards]

    return EveryRowSplit()


def trainer_class():
    """``TensorflowTrainer`` whose Ctrl-C ends in one line, for ``train`` and ``pretrain`` alike.
    Ray Train's own SIGINT handler aborts the run and then exits with status 1 and no message;
    this one aborts the same way and raises :class:`Interrupted` (a second Ctrl-C stops at once)."""

    import ray
    from ray.train.tensorflow import TensorflowTrainer

    class Trainer(TensorflowTrainer):
        def _register_sigint_handler(self, controller):
            def handler(signum, frame):
                signal.signal(signal.SIGINT, signal.default_int_handler)
                try:
                    ray.get(controller.abort.remote(), timeout=60)
                except Exception:  # the controller may be gone already; the run is over either way
                    pass
                raise KeyboardInterrupt

            signal.signal(signal.SIGINT, handler)

        def __init__(self, *args, **kwargs):
            """Ray Train's own policy retries every worker error alike (2.60 has no public way to
            tell a bad input from a lost node), so Ray is told 0 retries and :meth:`fit` keeps
            the ``max_failures`` budget."""
            super().__init__(*args, **kwargs)
            self.max_failures = self.run_config.failure_config.max_failures
            # in place: the run context holds this same RunConfig
            self.run_config.failure_config = dataclasses.replace(
                self.run_config.failure_config, max_failures=0
            )

        def fit(self):
            """Run, starting again from the latest checkpoint after a worker failure, at most
            ``max_failures`` times; a user error raised by a worker ends the run at once, as itself."""
            from ray.train.v2.api.exceptions import WorkerGroupError

            for failures in itertools.count(1):
                try:
                    return self._fit_once()
                except WorkerGroupError as exc:
                    if (user := worker_user_error(exc)) is not None:
                        raise user.with_traceback(None) from None
                    if failures > self.max_failures:
                        fault = environment_fault(
                            exc,
                            f"training run {self.run_config.name}",
                            f"checkpoints so far are in {paths.without_credentials(self.run_config.storage_path)}"
                            f"/{self.run_config.name}: run the same command again to resume "
                            f"from the latest (or raise train.max_failures)",
                        )
                        raise (fault or exc) from None
                    rank, err = min(exc.worker_failures.items())
                    log.warning(
                        "%s: worker %d failed (%s: %s); starting again from the latest checkpoint "
                        "(failure %d of %d allowed, train.max_failures)",
                        self.run_config.name,
                        rank,
                        type(err).__name__,
                        first_line(err),
                        failures,
                        self.max_failures,
                    )

        def _fit_once(self):
            try:
                return super().fit()
            except KeyboardInterrupt:  # ray.get re-raises a plain one: say what is kept
                ray.shutdown()  # stop streaming the actors' last log lines after ours
                storage = self.run_config.storage_path
                raise Interrupted(
                    f"interrupted: checkpoints so far are in {storage}/{self.run_config.name}; run "
                    f"the same command again to resume from the latest"
                ) from None

    return Trainer


def configure_tf(threads: int) -> None:
    """TensorFlow threads of this process (``threads`` intra-op, at most 2 inter-op; 0 keeps TF's
    default) and on-demand GPU memory. For training workers and labeling actors alike."""
    import tensorflow as tf

    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        except RuntimeError:  # already initialised in this process
            pass
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


def import_tensorflow():
    """Import TensorFlow (and initialise its devices) without its start-up chatter on stderr.

    TensorFlow 2.21 logs through absl before absl is initialised, which ignores
    ``TF_CPP_MIN_LOG_LEVEL`` (abseil/abseil-cpp#1718): oneDNN notes, "could not find cuda
    drivers", a failed ``cuInit`` on CPU machines. So stderr (the file descriptor) is captured
    while TensorFlow loads, and every line but that noise is written back. With
    ``TF_CPP_MIN_LOG_LEVEL=0`` nothing is filtered.
    """

    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        import tensorflow as tf

        return tf

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # cuInit happens here
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            drop = False
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if re.match(r"^([IWEF]\d{4} |WARNING: )", line):  # a new record (else: its continuation)
                    drop = bool(NOISE.search(line))
                if not drop:
                    print(line, file=sys.stderr)
    return tf
