"""Mistakes get one clear line, early: job configs, data files and pretrained checkpoints are
checked in the driver before Ray starts (no worker, no retry), and the command line prints one
line and exits 2."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from albert_ray.finetune.config import JobConfigError, load_job_config
from albert_ray.finetune.driver import check_job
from albert_ray.model.bundled import bundled_dir

sys.path.insert(0, str(Path(__file__).parent))
from test_encoder_checkpoint import random_variables, tiny  # noqa: E402

SAMPLE = "jobs/configs/sample_ner.yaml"


def _cli(*args, timeout=120):
    began = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "albert_ray.cli", *args], capture_output=True, text=True, timeout=timeout
    )
    return out.returncode, [line for line in out.stderr.splitlines() if line.strip()], time.time() - began


# ---- job configs -----------------------------------------------------------------------------
def test_yaml_that_is_a_list_or_unparsable_is_one_line(tmp_path):
    (tmp_path / "list.yaml").write_text("- name: x\n- task: ner\n")
    (tmp_path / "broken.yaml").write_text("name: x\ntask: [ner\n")
    with pytest.raises(JobConfigError) as err:
        load_job_config(tmp_path / "list.yaml")
    assert (
        str(err.value)
        == f"{tmp_path}/list.yaml: expected a mapping of settings (key: value lines), got a list"
    )
    rc, lines, _ = _cli("train", "--config", str(tmp_path / "broken.yaml"))
    assert rc == 2 and lines == [
        f"albert-ray train: error: {tmp_path}/broken.yaml: not valid YAML at line 3, "
        f"column 1: expected ',' or ']', but got '<stream end>'"
    ]


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.bilstm_units=-5", "model.bilstm_units=-5: must be >= 0"),
        (
            "model.stride=-10",
            "model.stride=-10: must be in [1, 126] (model.max_len - 2), or empty for half a window",
        ),
        (
            "model.stride=200",
            "model.stride=200: must be in [1, 126] (model.max_len - 2), or empty for half a window",
        ),
        ("train.patience=-1", "train.patience=-1: must be >= 0"),
        ("data.max_train_examples=0", "data.max_train_examples=0: must be >= 1, or empty for all examples"),
        ("train.max_failures=-2", "train.max_failures=-2: must be >= 0"),
    ],
)
def test_out_of_range_values_fail_at_load(override, message):
    with pytest.raises(JobConfigError) as err:
        load_job_config(SAMPLE, [override])
    assert str(err.value) == message


def test_a_shape_set_on_top_of_the_bundled_start_names_the_way_to_random_weights(tmp_path):
    config = json.loads((bundled_dir() / "albert_config.json").read_text())
    config.update(hidden_size=64)
    (tmp_path / "wide.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as err:
        check_job(load_job_config(SAMPLE, [f"model.encoder_config={tmp_path / 'wide.json'}"]))
    message = str(err.value)
    assert message.startswith(f"checkpoint {bundled_dir() / 'model.ckpt'} does not match config ")
    assert message.endswith(
        " (the job starts from the bundled encoder, model.init: bundled; "
        "model.init=none starts this shape from random weights)"
    )
    assert "\n" not in message


def test_file_level_problems_are_found_in_the_driver_before_ray(tmp_path):
    with pytest.raises(ValueError) as err:
        check_job(load_job_config(SAMPLE, ["model.max_len=1000"]))
    assert str(err.value) == (  # the sample job starts from the bundled encoder: its config is named
        f"model.max_len=1000 exceeds max_position_embeddings=512 of {bundled_dir() / 'albert_config.json'}"
    )
    # the Ray path: one line, exit 2, in seconds (no Ray started: it would print its own lines)
    rc, lines, seconds = _cli("train", "--config", SAMPLE, f"data.train={tmp_path}/missing.bio")
    assert rc == 2 and lines == [f"albert-ray train: error: data.train not found: {tmp_path}/missing.bio"]
    assert seconds < 60
    # a folder where a file is meant: said as such, also before Ray, for every kind of input file
    rc, lines, _ = _cli("train", "--config", SAMPLE, f"data.dev={tmp_path}")
    assert rc == 2 and lines == [f"albert-ray train: error: data.dev is a folder, not a file: {tmp_path}"]
    rc, lines, _ = _cli("train", "--config", str(tmp_path))
    assert rc == 2 and lines == [f"albert-ray train: error: job config is a folder, not a file: {tmp_path}"]
    rc, lines, _ = _cli("train", "--config", SAMPLE, f"model.vocab={tmp_path}")
    assert rc == 2 and lines == [f"albert-ray train: error: vocab file is a folder, not a file: {tmp_path}"]


def test_a_relative_path_not_found_names_the_working_directory_it_was_read_from(tmp_path):
    # the usual cause: the repo's configs (paths relative to the repo) run from another folder
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "albert_ray.cli",
            "pretrain",
            "--config",
            str(repo / "jobs/configs/pretrain/sample.yaml"),
            "--no-ray",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "albert-ray pretrain: error: encoder config not found: data/albert_config_sample.json "
        f"(relative to the working directory {tmp_path})"
    ]
    out = subprocess.run(
        [sys.executable, "-m", "albert_ray.cli", "train", "--config", str(repo / SAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"albert-ray train: error: data.train not found: data/ner_sample.train.bio "
        f"(relative to the working directory {tmp_path})"
    ]


def test_a_bad_record_found_while_preparing_is_one_line_without_a_ray_traceback(tmp_path):
    bad = tmp_path / "bad.bio"
    bad.write_text("张 B-PER\n伟 I-PER\n\n李 X-PER\n", encoding="utf-8")
    rc, lines, _ = _cli(
        "train", "--config", SAMPLE, f"data.train={bad}", f"output_dir={tmp_path}/runs", timeout=300
    )
    assert rc == 2
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"albert-ray train: error: {bad}:4")
    assert not any("Traceback" in line or "ray::" in line for line in lines)


def test_workers_that_leave_no_cpu_for_featurising_are_one_line_not_a_hang(tmp_path):
    import os

    cpus = os.cpu_count()
    rc, lines, _ = _cli(
        "train",
        "--config",
        SAMPLE,
        "train.num_workers=2",
        f"train.cpus_per_worker={cpus / 2:g}",
        f"output_dir={tmp_path}/runs",
        timeout=300,
    )
    assert rc == 2
    assert [line for line in lines if "error:" in line] == [
        f"albert-ray train: error: train.num_workers=2 x train.cpus_per_worker={cpus / 2:g} = {cpus:g} of the "
        f"cluster's {cpus:g} CPUs leaves less than 0.5 for reading the training data: lower train.cpus_per_worker "
        "(TensorFlow's threads are set apart, by train.tf_threads)"
    ]
    assert not any("Traceback" in line for line in lines)


# ---- pretrained checkpoints ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from albert_ray.model.checkpoint import write_variables

    t = tmp_path_factory.mktemp("ckpt")
    cfg = tiny("albert_brightmart")
    (t / "albert_config.json").write_text(json.dumps(cfg))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(0x4E00 + i) for i in range(95)]
    (t / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    write_variables(
        t / "ck" / "model.ckpt", random_variables("albert_brightmart", cfg, np.random.default_rng(0))
    )
    google = tiny("albert_google")
    write_variables(
        t / "g" / "model.ckpt", random_variables("albert_google", google, np.random.default_rng(0))
    )
    (t / "wide.json").write_text(json.dumps(dict(cfg, intermediate_size=48)))
    return t


def _job(t, checkpoint, *extra):
    return load_job_config(
        SAMPLE,
        [
            "model.init=checkpoint",
            f"model.checkpoint={checkpoint}",
            f"model.encoder_config={t / 'albert_config.json'}",
            f"model.vocab={t / 'vocab.txt'}",
            "model.max_len=32",
            *extra,
        ],
    )


def _damaged(t, name, suffix, keep):
    folder = t / name
    if not folder.exists():
        shutil.copytree(t / "ck", folder)
        f = next(folder.glob(f"model.ckpt{suffix}"))
        f.write_bytes(f.read_bytes()[: keep(f.stat().st_size)])
    return folder


def test_a_good_checkpoint_passes(ckpt):
    check_job(_job(ckpt, ckpt / "ck"))


def test_checkpoint_faults_are_one_line_naming_the_checkpoint_and_the_config(ckpt):
    cases = {
        _damaged(
            ckpt, "trunc_data", ".data-*", lambda n: n // 2
        ): "checkpoint {c}/model.ckpt: variable bert/encoder/layer_shared/attention/self/query/kernel cannot be read "
        "(Read less bytes than requested); its data file is damaged or truncated",
        _damaged(
            ckpt, "trunc_index", ".index", lambda n: 20
        ): "checkpoint {c}/model.ckpt: its index file {c}/model.ckpt.index cannot be read (file is too short to be "
        "an sstable); it is damaged or truncated",
        ckpt / "g": "checkpoint {c}/model.ckpt is a Google-format ALBERT (embedding_hidden_mapping_in, "
        "transformer/group_N/inner_group_M) checkpoint, but config {t}/albert_config.json describes a brightmart "
        "ALBERT (albert_zh: word_embeddings_2, encoder/layer_shared) model; use a Google-format "
        "albert_config_*_google.json (with num_hidden_groups) with this checkpoint",
    }
    for folder, message in cases.items():
        with pytest.raises(ValueError) as err:
            check_job(_job(ckpt, folder))
        assert str(err.value) == message.format(c=folder, t=ckpt)
    (ckpt / "empty").mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError) as err:
        check_job(_job(ckpt, ckpt / "empty"))
    assert str(err.value) == (
        f"no TensorFlow checkpoint in directory {ckpt}/empty: it holds no 'checkpoint' file, "
        f"and no '<prefix>.index' file"
    )
    with pytest.raises(ValueError) as err:
        check_job(_job(ckpt, ckpt / "ck", f"model.encoder_config={ckpt / 'wide.json'}"))
    assert str(err.value).startswith(
        f"checkpoint {ckpt}/ck/model.ckpt does not match config {ckpt}/wide.json "
        f"(brightmart ALBERT (albert_zh: word_embeddings_2, encoder/layer_shared)): "
        f"shape conflicts (3): bert/encoder/layer_shared/intermediate/dense/kernel: "
        f"checkpoint [32, 64] vs model [32, 48]; "
    )
    assert "\n" not in str(err.value)


def test_cli_train_with_a_truncated_checkpoint_fails_in_the_driver_without_retry(ckpt):
    folder = _damaged(ckpt, "trunc_data", ".data-*", lambda n: n // 2)
    rc, lines, seconds = _cli(
        "train",
        "--config",
        SAMPLE,
        "model.init=checkpoint",
        f"model.checkpoint={folder}",
        f"model.encoder_config={ckpt / 'albert_config.json'}",
        f"model.vocab={ckpt / 'vocab.txt'}",
        "model.max_len=32",
    )
    assert rc == 2 and lines == [
        f"albert-ray train: error: checkpoint {folder}/model.ckpt: variable "
        f"bert/encoder/layer_shared/attention/self/query/kernel cannot be read (Read less "
        f"bytes than requested); its data file is damaged or truncated"
    ]
    assert seconds < 60


# ---- predict ---------------------------------------------------------------------------------------
OLD_MODEL = Path(__file__).parent / "data" / "model_before_mixed_precision"


def test_invisible_characters_are_never_tokens_or_entities():
    from albert_ray.inference.labeler import Labeler

    labeler = Labeler.from_dir(OLD_MODEL)
    plain = "张伟昨天在北京会见了新华社代表团。"
    base = [(e["start"], e["end"], e["label"]) for e in labeler.predict([plain])[0]["entities"]]
    assert base
    for junk in ("\ufeff", "\x00", "\ud83d", "\u200b"):
        got = labeler.predict([junk + plain])[0]["entities"]
        assert [(e["start"] - 1, e["end"] - 1, e["label"]) for e in got] == base


def test_predict_file_keeps_one_output_line_per_input_line(tmp_path):
    f = tmp_path / "texts.txt"
    f.write_bytes(
        "\ufeff张伟在北京。\r\n\n李明\xff来了\n王芳到了上海。\n".encode("utf-8").replace(b"\xc3\xbf", b"\xff")
    )
    out = subprocess.run(
        [sys.executable, "-m", "albert_ray.cli", "predict", "--model", str(OLD_MODEL), "--file", str(f)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert [r["text"] for r in records] == ["张伟在北京。", "", None, "王芳到了上海。"]
    assert records[1] == {"line": 2, "text": ""}
    assert records[2] == {"line": 3, "text": None, "error": "invalid UTF-8 (byte 0xff at column 7)"}
    assert "entities" in records[0] and "entities" in records[3]
    assert [line for line in out.stderr.splitlines() if "predict" in line] == [
        f"albert-ray predict: {f}:3: invalid UTF-8 (byte 0xff at column 7); its output line holds the error"
    ]


# ---- errors inside Ray Train workers ----------------------------------------------------------
def _failing_loop():
    """A training loop for Ray Train workers (nested: pickled by value, workers need not import this file)."""

    def loop(config):
        """Resume from the last checkpoint, record the step this attempt starts at, report a checkpoint,
        then let rank 0 fail as ``config["fail"]`` says while fewer than ``config["until"]`` attempts ran."""
        import json
        import os
        import tempfile
        import time

        import ray.train

        from albert_ray.io.training_files import DataError

        start = 0
        if ray.train.get_checkpoint():
            with ray.train.get_checkpoint().as_directory() as d:
                start = json.loads(open(os.path.join(d, "state.json")).read())["step"]
        rank = ray.train.get_context().get_world_rank()
        if rank == 0:
            with open(config["log"], "a") as f:
                f.write(f"{start}\n")
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "state.json"), "w") as f:
                f.write(json.dumps({"step": start + 1}))
            ray.train.report({"step": start + 1}, checkpoint=ray.train.Checkpoint.from_directory(d))
        if rank == 0 and start < config["until"]:
            if config["fail"] == "user":
                raise DataError("corpus.txt line 3: the text is not a string (a list)")
            snapshot = os.path.join(config["run_dir"], "checkpoint_manager_snapshot.json")
            for _ in range(600):  # die once the controller has registered this attempt's checkpoint
                try:
                    if len(json.loads(open(snapshot).read()).get("checkpoint_results") or []) > start:
                        break
                except (OSError, ValueError):  # not there yet, or being written
                    pass
                time.sleep(0.05)
            os._exit(1)  # the process dies: what a lost node or the OOM killer looks like

    return loop


def _run(tmp_path, name: str, fail: str, until: int, max_failures: int):
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    from albert_ray.runtime.attach import trainer_class

    log = tmp_path / f"{name}.log"
    trainer = trainer_class()(
        _failing_loop(),
        train_loop_config={
            "log": str(log),
            "fail": fail,
            "until": until,
            "run_dir": str(tmp_path / "ray" / name),
        },
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(
            name=name,
            storage_path=str(tmp_path / "ray"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    try:
        return trainer.fit(), None, [int(v) for v in log.read_text().split()]
    except Exception as exc:  # noqa: BLE001 (the test looks at which one)
        return None, exc, [int(v) for v in log.read_text().split()]


@pytest.mark.slow
@pytest.mark.ci
def test_a_user_error_in_a_worker_is_not_retried_and_a_dead_worker_resumes_from_its_checkpoint(
    tmp_path, local_ray, caplog
):
    import logging
    import re

    from albert_ray.errors import EnvironmentFault
    from albert_ray.io.training_files import DataError

    # a user error: one attempt although two retries are allowed, and the error is the worker's own
    result, exc, starts = _run(tmp_path, "user", "user", until=9, max_failures=2)
    assert type(exc) is DataError and str(exc) == "corpus.txt line 3: the text is not a string (a list)"
    assert starts == [0]
    # a dead worker: started again from the latest checkpoint, as often as allowed, then one line
    # (that a run finishes after a restart is test_ray_training's killed-worker test)
    caplog.set_level(logging.WARNING, logger="albert_ray.runtime.attach")
    result, exc, starts = _run(tmp_path, "dies", "exit", until=9, max_failures=1)
    assert isinstance(exc, EnvironmentFault) and starts == [0, 1]
    assert str(exc) == (
        f"training run dies: a node or Ray worker was lost beyond Ray's retries "
        f"(WorkerHealthCheckFailedError); checkpoints so far are in {tmp_path / 'ray'}/dies: run the "
        f"same command again to resume from the latest (or raise train.max_failures)"
    )
    said = [
        re.sub(r"\(\w+: [^)]*\)", "(ERROR)", r.getMessage())
        for r in caplog.records
        if r.name == "albert_ray.runtime.attach"
    ]
    assert said == [
        "dies: worker 0 failed (ERROR); starting again from the latest checkpoint (failure 1 of 1 "
        "allowed, train.max_failures)"
    ]


def test_ray_train_tracebacks_of_a_user_error_are_not_logged_and_others_are():
    import logging

    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    from albert_ray.io.training_files import DataError
    from albert_ray.runtime.quiet import _not_a_user_error

    def record(exc_info=None):
        return logging.LogRecord("ray.train", logging.ERROR, __file__, 1, "failed", None, exc_info)

    def controller_record(*errors):  # the controller logs its decision with the WorkerGroupError
        exc = WorkerGroupError(
            "snippet",
            {rank: UserExceptionWithTraceback(err, "Traceback ...") for rank, err in enumerate(errors)},
        )
        return record((WorkerGroupError, exc, None))

    assert not _not_a_user_error(
        controller_record(RuntimeError("collective aborted"), DataError("a.txt line 3"))
    )
    assert not _not_a_user_error(controller_record(FileNotFoundError("corpus.txt")))
    assert not _not_a_user_error(controller_record(PermissionError(13, "Permission denied", "/data/a.txt")))
    assert not _not_a_user_error(controller_record(IsADirectoryError(21, "Is a directory", "/data")))
    assert _not_a_user_error(controller_record(ConnectionResetError("object store connection reset")))
    assert _not_a_user_error(controller_record(RuntimeError("CUDA out of memory"), MemoryError()))
    from ray.exceptions import ActorDiedError

    # a lost worker: the driver's one warning line says it; a lost worker beside a bug keeps the dump
    assert not _not_a_user_error(controller_record(ActorDiedError()))
    assert _not_a_user_error(controller_record(ActorDiedError(), ZeroDivisionError("a bug")))
    try:  # the worker logs inside the except block that caught its training function's error
        raise DataError("a.txt line 3: bad label 'X'")
    except DataError:
        assert not _not_a_user_error(record())
    try:
        raise ZeroDivisionError("a bug")
    except ZeroDivisionError:
        assert _not_a_user_error(record())
    assert _not_a_user_error(record())  # no error at all


def test_a_user_error_raised_in_a_ray_task_prints_its_own_line_without_the_remote_traceback(
    monkeypatch, capsys
):
    from ray.exceptions import RayTaskError

    from albert_ray import cli
    from albert_ray.errors import unwrapped
    from albert_ray.io.training_files import DataError

    cause = DataError("a.jsonl line 3: text is not a string")
    wrapped = RayTaskError(
        "read_unit", "Traceback (most recent call last):\n  File ...", cause
    ).as_instanceof_cause()
    assert isinstance(wrapped, DataError) and "(pid=" in str(
        wrapped
    )  # what Ray raises: its text is the remote trace
    assert unwrapped(wrapped) is cause
    bug = RayTaskError("read_unit", "Traceback ...", ZeroDivisionError("a bug")).as_instanceof_cause()
    assert unwrapped(bug) is bug  # not the user's: kept whole

    def fails(args):
        raise wrapped

    monkeypatch.setattr(cli, "_cmd_label", fails)
    assert cli.main(["label", "--model", "m", "--input", "a.jsonl", "--output", "o"]) == 2
    assert capsys.readouterr().err == "albert-ray label: error: a.jsonl line 3: text is not a string\n"


def test_an_object_a_read_task_cannot_read_is_one_line_exit_1_and_ray_datas_tracebacks_of_it_are_not_logged(
    monkeypatch, capsys
):
    import logging

    from ray.exceptions import RayTaskError

    from albert_ray import cli
    from albert_ray.errors import InputUnreadable
    from albert_ray.runtime.quiet import _not_a_one_line_error

    cause = InputUnreadable(
        "input s3://b/in/a.txt cannot be read: AWS Error NETWORK_CONNECTION during GetObject"
    )
    wrapped = RayTaskError("read", "Traceback ...", cause).as_instanceof_cause()
    # what Ray Data appends to a failed task's message: kept out of the line
    wrapped.args = (
        f"{wrapped.args[0]}\nFailed to apply UDF transform after 1/1 attempts (total backoff 0.0s).",
    )

    def fails(args):
        raise wrapped

    monkeypatch.setattr(cli, "_cmd_label", fails)
    assert (
        cli.main(["label", "--model", "m", "--input", "s3://b/in", "--output", "o"]) == 1
    )  # not the user's: 1, not 2
    assert capsys.readouterr().err == (
        "albert-ray label: error: input s3://b/in/a.txt cannot be read: AWS Error "
        "NETWORK_CONNECTION during GetObject\n"
    )

    def record(exc):
        return logging.LogRecord(
            "ray.data",
            logging.ERROR,
            __file__,
            1,
            "An exception was raised",
            None,
            (type(exc), exc, None) if exc else None,
        )

    assert not _not_a_one_line_error(record(wrapped))
    assert not _not_a_one_line_error(
        record(RayTaskError("read", "Traceback ...", ValueError("x")).as_instanceof_cause())
    )
    assert _not_a_one_line_error(
        record(RayTaskError("read", "Traceback ...", KeyError("bug")).as_instanceof_cause())
    )
    assert _not_a_one_line_error(record(None))


def test_an_unreadable_input_is_one_line_naming_it_before_any_read_task(tmp_path):
    from albert_ray.io.corpus import expand_inputs

    unreadable = "/proc/sys/vm/drop_caches"  # a file that is write-only even for root
    try:
        open(unreadable, "rb").close()
        pytest.skip(f"{unreadable} is readable here")
    except FileNotFoundError:
        pytest.skip(f"no {unreadable} here")
    except PermissionError:
        pass
    (tmp_path / "ok.txt").write_text("北京欢迎你\n", encoding="utf-8")
    with pytest.raises(PermissionError) as err:  # label and pretrain plan their inputs with it
        expand_inputs([str(tmp_path / "ok.txt"), unreadable])
    assert str(err.value) == f"input {unreadable} cannot be read: Permission denied"
    rc, lines, _ = _cli(
        "pretrain", "--config", "jobs/configs/pretrain/sample.yaml", "--input", unreadable, "--no-ray"
    )
    assert rc == 2 and lines == [
        f"albert-ray pretrain: error: input {unreadable} cannot be read: Permission denied"
    ]


# ---- faults of the environment -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.skipif(
    shutil.which("mount") is None or __import__("os").geteuid() != 0, reason="needs root for a tmpfs"
)
def test_a_full_output_disk_is_one_line_exit_1_and_the_same_command_then_finishes(tmp_path, small_ner_model):
    """A 64 KiB tmpfs output fills mid-run: one line with the cause and that the same command
    resumes, exit code 1, no traceback; with space freed (the tmpfs grown) the same command
    finishes with every row once."""
    import re

    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus.txt"
    lines = [f"张伟在北京见了王芳，第{i}次。" for i in range(3000)]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)], check=True)
    try:
        cmd = (
            "label",
            "--model",
            small_ner_model,
            "--input",
            str(corpus),
            "--output",
            str(out),
            "--no-progress",
            "--include-text",
            "--unit-bytes",
            "16KiB",
            "--batch-size",
            "250",
        )
        code, err, _ = _cli(*cmd, timeout=600)
        assert code == 1, err
        errors = [line for line in err if line.startswith("albert-ray label: error:")]
        assert len(errors) == 1 and not any("Traceback" in line for line in err), err
        found = re.fullmatch(
            rf"albert-ray label: error: output {re.escape(str(out))}: no space left on the device or "
            r"quota \(.*No space left on device.*\); (\d+) of (\d+) units are committed and kept: mend "
            r"it and run the same command again to resume",
            errors[0],
        )
        assert found, errors[0]
        subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)
        code, err, _ = _cli(*cmd, timeout=600)
        assert code == 0, err
        rows = pq.read_table(out).select(["source", "line"]).to_pylist()
        assert len(rows) == len({(r["source"], r["line"]) for r in rows}) == 3000
        manifest = json.loads((out / "_manifest.json").read_text())
        assert (manifest["units_reused"], manifest["units"]) == (int(found.group(1)), int(found.group(2)))
    finally:
        subprocess.run(["umount", str(out)], check=False)


def test_faults_of_the_environment_found_in_rays_wrapper_text_are_one_line():
    """What reaches the driver is Ray's wrapper whose text holds the remote traceback; the line
    names the cause and that the same command resumes. An unreadable input keeps its own line."""
    from ray.exceptions import RayTaskError

    from albert_ray.errors import InputUnreadable, environment_fault

    def remote(text):
        return RayTaskError(
            "MapBatches(LabelWriter)",
            f"Traceback (most recent call last):\n  File ...\n{text}",
            RuntimeError("UDF failed"),
        ).as_instanceof_cause()

    resume = "3 of 9 units are committed and kept: run the same command again to resume"
    full = environment_fault(
        remote("OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"),
        "output /data/labels",
        resume,
    )
    assert str(full) == (
        "output /data/labels: no space left on the device or quota (OSError: [Errno 28] Error "
        "writing bytes to file. Detail: [errno 28] No space left on device); " + resume
    )
    slow = environment_fault(
        remote(
            "OSError: When uploading part for key 'l/unit=a/part-1.parquet' in bucket 'b': "
            "AWS Error SLOW_DOWN during UploadPart operation: Please reduce your request rate."
        ),
        "output s3://b/l",
        resume,
    )
    assert str(slow) == (
        "output s3://b/l: the store refused or timed out (When uploading part for key "
        "'l/unit=a/part-1.parquet' in bucket 'b': AWS Error SLOW_DOWN during UploadPart operation: "
        "Please reduce your request rate.); " + resume
    )
    assert environment_fault(remote("ZeroDivisionError: division by zero"), "output x", resume) is None
    assert environment_fault(InputUnreadable("input s3://b/a.txt cannot be read"), "output x", resume) is None
