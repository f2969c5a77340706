"""What a user sees by default: our lines, progress, warnings and errors; not TensorFlow's C++
start-up logs (absl, oneDNN, CUDA probing) nor Ray's internal chatter, in the driver or in the
lines Ray forwards from its workers. ``albert-ray -v`` (``ALBERT_RAY_VERBOSE=1``) shows everything.

Worker lines are filtered where the driver prints them: TensorFlow 2.21 writes its start-up
lines through absl before absl is initialised, ignoring ``TF_CPP_MIN_LOG_LEVEL``
(abseil/abseil-cpp#1718), so they cannot be switched off inside the workers; and Ray has no
public hook for the printing of worker logs, so :func:`filter_ray_logs` replaces its handler.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

from albert_ray.errors import ONE_LINE, lost_worker, unwrapped, worker_user_error
from albert_ray.runtime.progress import PROGRESS_MARK, DriverBars

VERBOSE_ENV = "ALBERT_RAY_VERBOSE"

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# "(RayTrainWorker pid=7353) ", "(raylet) ", "(raylet, ip=10.0.3.7) "
_RAY_PREFIX = re.compile(r"^\((?:(?:[\w.:-]+ )?pid=\d+|raylet)(?:, ip=[\d.]+)?\) ")

NOISE = re.compile(
    "|".join(
        [
            # TensorFlow / absl start-up
            r"^WARNING: All log messages before absl::InitializeLog\(\) is called",
            r"^[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+\.cc:\d+\]",
            r"^E\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+\.cc:\d+\] .*(cuInit|CUDA|cuda|oneDNN)",
            r"^To enable the following instructions: .*rebuild TensorFlow",
            r"^INFO:tensorflow:",  # tf.distribute's notes in multi-worker runs
            r"^(Collective all_reduce|Enabled multi-worker collective ops|Using MirroredStrategy|"
            r"MultiWorkerMirroredStrategy with cluster_spec|Check health not enabled|Collective batch_all_reduce)",
            # Ray's C++ logs
            r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [IWE] \d+ \d+\] \S+\.cc:\d+:",
            # Ray Train's controller and workers (our own line per epoch replaces the report repr)
            r"^Requesting resources: ",
            r"^Attempting to start training worker group",
            r"^Started training worker group of size",
            r"^- \(ip=[^)]*, pid=\d+\) world_rank=",
            r"^Checkpoint successfully created at: ",
            r"^Reporting training result \d+: TrainingReport\(",
            r"^A run snapshot was found in storage folder at: ",  # we say "resumed from checkpoint at epoch N"
            r"^This snapshot contains a list of checkpoints reported via ",
            r"^If you meant to start a brand new training job without any information about previous",
            # the raylet's note of a worker process that died (the driver's own warning names it)
            r"^A worker died or was killed while executing a task by an unexpected system error\.",
            # its placement-group cleaner, while the controller is being torn down (Ctrl-C)
            r"^Failed to query Ray Train Controller actor state\. ",
            # Ray Data's execution notes and deprecation chatter
            r"^Starting execution of Dataset ",
            r"^Execution plan of Dataset ",
            r"^\[dataset\]: A new progress UI is available",
            r"^Progress bars disabled\. To enable, set ",
            r"^.*Dataset \S+ execution finished in ",
            r"RayDeprecationWarning: ",
            r"^\s+self\.exclude_resources = exclude_resources$",
        ]
    )
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def set_verbose(on: bool) -> None:
    """``-v``: show everything, also TensorFlow's own C++ logs (here and in Ray workers)."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"
    if on:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # deprecation notes about Ray's own internals, printed by the driver
        warnings.filterwarnings("ignore", message=r".*(deprecated|Deprecat).*", module=r"ray(\.|$)")
        # "Token authentication is enabled for this Ray cluster": docs/clusters.md says so, once
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


# Ray Train 2.60's loggers that print a failed training function's traceback: the worker's, and
# the controller's with its failure decision (the same traceback again)
_TRACEBACK_LOGGERS = (
    "ray.train.v2._internal.util",
    "ray.train.v2._internal.execution.failure_handling.default",
)
SETUP_HOOK = "albert_ray.runtime.quiet.hide_user_error_tracebacks"  # runtime_env worker_process_setup_hook


def hide_user_error_tracebacks() -> None:
    """Ray's process setup hook (``SETUP_HOOK``): for a user error raised in a training worker
    the driver prints the error's own line (:mod:`albert_ray.errors`), and for a lost worker its
    one warning line, so Ray Train's tracebacks of them are not logged. Every other failure keeps
    them; ``-v`` keeps all."""
    for name in _TRACEBACK_LOGGERS:
        logging.getLogger(name).addFilter(_not_a_user_error)


def _not_a_user_error(record: logging.LogRecord) -> bool:

    # the worker logs inside its except block; the controller passes the WorkerGroupError. A
    # lost worker gets the driver's one warning line instead of the controller's dump of it
    exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
    return verbose() or (worker_user_error(exc) is None and not lost_worker(exc))


def is_noise(line: str) -> bool:
    """A line the default output leaves out (never when verbose)."""
    return not verbose() and bool(NOISE.search(_RAY_PREFIX.sub("", _ANSI.sub("", line))))


def filter_ray_logs() -> None:
    """Make the driver drop noise lines from the worker logs Ray forwards to it, and draw the
    progress bars workers send (:class:`albert_ray.runtime.progress.StepBar`) instead of printing them.

    Replaces Ray's own ``ray_print_logs`` handler (``ray._private.worker``) by one that filters
    the lines and then calls Ray's printer, so prefixes and deduplication stay Ray's. Does
    nothing if this Ray has no such handler.
    """

    try:
        from ray._private import worker as ray_worker

        dispatcher = ray_worker.global_worker_stdstream_dispatcher
        printer = ray_worker.print_to_stdstream
        ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
    except (ImportError, AttributeError):
        return
    if not any(name == "ray_print_logs" for name, _ in dispatcher.handlers):
        return  # log_to_driver=False: nothing is printed anyway

    bars = DriverBars()

    def print_kept(data: dict) -> None:
        lines = []
        for line in data.get("lines", []):
            if PROGRESS_MARK in line:
                try:
                    bars.update(line)
                except (ValueError, KeyError):  # a line cut by the log monitor: the next one redraws
                    pass
            elif not is_noise(line):
                lines.append(line)
        if lines:
            printer({**data, "lines": lines}, ignore_prefix)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", print_kept)


def quiet_ray_data() -> None:
    """Ray Data datasets made in this driver print no execution notes and no progress bars of
    their own (the training's featurisation runs inside Ray Train, where its bars are garbage)."""
    if verbose():
        return
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    # ... which Ray Data then announces once per process: "Progress bars disabled. To enable, ..."
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    ctx.print_on_execution_start = False
    # "Dataset ... execution finished in 2.2 seconds", "Tip: Use `take_batch()` ...": ours say the
    # same ("packed corpus: 87 rows ready in 2.3 s"); Ray Data's warnings and errors still show
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # a read task's one-line error (albert_ray.errors.ONE_LINE) is printed by the command line;
    # Ray Data's two tracebacks of it are not
    for name in _DATA_TRACEBACK_LOGGERS:
        logging.getLogger(name).addFilter(_not_a_one_line_error)


# Ray Data 2.60's driver loggers that print a failed task's traceback as the dataset aborts
_DATA_TRACEBACK_LOGGERS = ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions")


def _not_a_one_line_error(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
    return exc is None or not isinstance(unwrapped(exc), ONE_LINE)
