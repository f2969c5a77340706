"""A real multi-node cluster, as on Kubernetes: a head node that runs no tasks (``num-cpus: 0``)
and two worker nodes, all on 127.0.0.1, each worker node in a private mount namespace where the
test's job folder (the driver's disk) is an empty tmpfs and Ray's temp folder is its own; an
S3-compatible server (moto) on 127.0.0.1 is the shared storage, reached through the standard
credential chain (``AWS_*`` environment variables every node inherits), never through the URI.
Everything is started here and stopped by the process ids started (root: ``unshare -m``)."""

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from albert_ray.runtime.localcluster import _alive, add_worker_node, start_local_cluster

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="unshare -m needs root")]

BUCKET = "albert-ray-mn"
SECRET = "mn-secret-9f3b7c1d"  # moto takes any key; a run must never write it anywhere
TEXTS = ["张伟昨天在北京会见了新华社代表团。", "王芳去上海。", "李明在清华大学工作。", "今天天气很好。"]


@pytest.fixture(scope="module")
def job_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("job")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto on 127.0.0.1; the AWS_* variables of the standard chain, set before the nodes start
    (so every node has them, as every node of a real cluster has its credentials)."""
    from s3server import moto

    with moto(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield from _with_aws_env(endpoint)


def _with_aws_env(endpoint: str):
    import pyarrow.fs as pafs

    env = {
        "AWS_ACCESS_KEY_ID": "mn-key",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{endpoint}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}?allow_bucket_creation=true")
        fs.create_dir(BUCKET)
        yield fs
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def cluster(s3, job_folder, tmp_path_factory):
    """Head (0 CPUs) + two 1-CPU worker nodes that cannot see ``job_folder``; this process is
    the driver, attached as ``albert-ray ... ray_address=`` attaches."""
    import ray

    from albert_ray.runtime.attach import init_ray

    head = start_local_cluster(num_cpus=0, state_dir=tmp_path_factory.mktemp("cluster"))
    nodes = []
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    try:
        nodes = [
            add_worker_node(head, num_cpus=1, private_dirs=(str(job_folder),), name=f"w{i}") for i in (1, 2)
        ]
        os.environ.update({k: v for k, v in head.client_env().items() if k != "RAY_ADDRESS"})
        _reload_auth()  # Ray read the auth settings when it was imported (by an earlier test)
        init_ray(head.address)
        assert sorted(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]) == [0, 1, 1]
        yield head, nodes
    finally:
        ray.shutdown()
        head.stop()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        _reload_auth()
    leftover = [p for p in head.pids + [pid for n in nodes for pid in n.processes()] if _alive(p)]
    assert leftover == []


def _reload_auth() -> None:
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()


@pytest.fixture(scope="module")
def model(small_ner_model, job_folder) -> str:
    """The session's small NER model, copied into the job folder (the driver's disk only)."""
    import shutil

    return str(shutil.copytree(small_ner_model, job_folder / "model"))


def _put(fs, key: str, text: str) -> str:
    with fs.open_output_stream(f"{BUCKET}/{key}") as f:
        f.write(text.encode("utf-8"))
    return f"s3://{BUCKET}/{key}"


def _corpus(fs, prefix: str, files: int = 2, lines: int = 150) -> tuple[str, dict]:
    """``files`` text files of ``lines`` lines on the store; the expected {(source, line): text}."""
    expected = {}
    for i in range(files):
        rows = [f"{TEXTS[(n + i) % len(TEXTS)]}{n}" for n in range(lines)]
        uri = _put(fs, f"{prefix}/part{i}.txt", "\n".join(rows) + "\n")
        expected.update({(uri, n + 1): t for n, t in enumerate(rows)})
    return f"s3://{BUCKET}/{prefix}", expected


def _read_back(fs, uri: str):
    import pandas as pd
    import pyarrow.parquet as pq

    path = uri.removeprefix("s3://")
    table = pq.read_table(path, filesystem=fs)
    frame = pd.read_parquet(path, filesystem=fs)
    assert len(frame) == table.num_rows
    return table, frame


def _grep_store(fs, prefix: str, needle: str) -> list[str]:
    import pyarrow.fs as pafs

    hits = []
    for info in fs.get_file_info(
        pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
    ):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                if needle.encode() in f.read():
                    hits.append(info.path)
    return hits


@pytest.mark.ci
def test_label_s3_to_s3_with_the_model_on_s3_and_on_the_drivers_disk(cluster, s3, model, job_folder):
    from albert_ray import modeldir
    from albert_ray.label.config import LabelConfig
    from albert_ray.label.run import label_corpus
    from albert_ray.label.store import output_schema

    inputs, expected = _corpus(s3, "in")
    spec, _ = modeldir.check(model)
    model_uri = modeldir.publish(model, f"s3://{BUCKET}/models/ner")
    assert set(modeldir.paths.files_under(model_uri)) >= {
        "job.json",
        "model.json",
        "model.weights.h5",
        "vocab.txt",
    }
    for where, model_location in (
        ("s3", model_uri),
        ("local", model),
    ):  # (a) on the store, (b) the driver's disk
        out = f"s3://{BUCKET}/labels-{where}"
        manifest = label_corpus(
            LabelConfig(model=model_location, inputs=(inputs,), output=out, progress=False)
        )
        assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_quarantined"]) == (300, 300, 0)
        table, frame = _read_back(s3, out)
        assert table.schema.remove(table.schema.get_field_index("unit")) == output_schema(spec)
        got = sorted(zip(frame["source"], frame["line"]))
        assert got == sorted(expected) and len(set(got)) == 300  # every row once, line numbers exact
        assert manifest["model"] == (model_uri if where == "s3" else str(Path(model).resolve()))
    # both runs labeled with the same model bytes, whatever its location
    a, b = (
        json.loads(s3.open_input_stream(f"{BUCKET}/labels-{w}/_manifest.json").read())
        for w in ("s3", "local")
    )
    assert a["model_checksum"] == b["model_checksum"] == modeldir.checksum(modeldir.pack(model))
    assert _grep_store(s3, "", SECRET) == []
    from albert_ray.inference.labeler import (
        Labeler,
    )  # predict / evaluate / export open a model at a URI alike

    assert Labeler.from_dir(model_uri).predict(TEXTS) == Labeler.from_dir(model).predict(TEXTS)


@pytest.mark.ci
def test_local_inputs_and_outputs_are_refused_in_one_line_before_any_read_task(
    cluster, s3, model, job_folder
):
    from albert_ray.label.config import LabelConfig
    from albert_ray.label.run import label_corpus

    corpus = job_folder / "corpus.txt"
    corpus.write_text("张伟\n王芳\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        label_corpus(
            LabelConfig(model=model, inputs=(str(corpus),), output=f"s3://{BUCKET}/never", progress=False)
        )
    assert re.fullmatch(
        rf"input {re.escape(str(corpus))} is a local path that node 127\.0\.0\.1 \([0-9a-f]{{8}}\) of "
        r"this 3-node cluster cannot see, and read tasks open it on every node: give a URI "
        r"\(s3://bucket/\.\.\.\) or a path on a filesystem every node mounts",
        str(err.value),
    )
    inputs, _ = _corpus(s3, "small", files=1, lines=3)
    out = job_folder / "labels"
    with pytest.raises(ValueError) as err:
        label_corpus(LabelConfig(model=model, inputs=(inputs,), output=str(out), progress=False))
    assert re.fullmatch(
        rf"output {re.escape(str(out))} is a local path that node "
        r"127\.0\.0\.1 \([0-9a-f]{8}\) of this 3-node cluster cannot see, and labeling actors write "
        r"into it on every node: give a URI \(s3://bucket/\.\.\.\) or a path on a filesystem every "
        r"node mounts",
        str(err.value),
    )
    assert [p.name for p in out.iterdir()] == []  # the marker is gone, nothing was labeled
    assert _grep_store(s3, "never", "") == []


@pytest.mark.ci
def test_a_truncated_committed_part_is_relabeled_and_the_folder_reads_whole(cluster, s3, model):
    import pyarrow.fs as pafs

    from albert_ray.label.config import LabelConfig
    from albert_ray.label.run import label_corpus

    inputs, expected = _corpus(s3, "trunc", files=2, lines=40)
    cfg = LabelConfig(model=model, inputs=(inputs,), output=f"s3://{BUCKET}/labels-trunc", progress=False)
    first = label_corpus(cfg)
    assert (first["units"], first["rows_out"]) == (2, 80)
    parts = sorted(
        i.path
        for i in s3.get_file_info(pafs.FileSelector(f"{BUCKET}/labels-trunc", recursive=True))
        if i.path.endswith(".parquet") and "/unit=" in i.path and "_quarantine" not in i.path
    )
    data = s3.open_input_stream(parts[0]).read()
    with s3.open_output_stream(parts[0]) as f:  # a partial copy between buckets
        f.write(data[: len(data) // 2])
    again = label_corpus(cfg)
    assert (again["units_reused"], again["rows_labeled_this_run"], again["rows_out"]) == (1, 40, 80)
    _, frame = _read_back(s3, cfg.output)
    assert sorted(zip(frame["source"], frame["line"])) == sorted(expected)


def test_a_killed_labeling_actor_costs_a_retry_not_a_row(cluster, s3, model):
    """SIGKILL the labeling actor's process on one worker node mid-run: Ray restarts it and
    retries its batch; every (source, line) comes out exactly once."""
    from albert_ray.label.config import LabelConfig
    from albert_ray.label.run import label_corpus

    _, nodes = cluster
    inputs, expected = _corpus(s3, "kill", files=4, lines=300)
    killed = []

    def killer():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            for pid in nodes[1].processes():
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if "LabelWriter" in title:
                    time.sleep(2.0)  # labeling, not starting
                    os.kill(pid, 9)
                    killed.append(pid)
                    return
            time.sleep(0.2)

    threading.Thread(target=killer, daemon=True).start()
    cfg = LabelConfig(
        model=model,
        inputs=(inputs,),
        output=f"s3://{BUCKET}/labels-kill",
        progress=False,
        batch_size=100,
        unit_bytes=4096,
    )
    manifest = label_corpus(cfg)
    assert killed, "no labeling actor was found on the second worker node"
    _, frame = _read_back(s3, cfg.output)
    got = list(zip(frame["source"], frame["line"]))
    assert len(got) == len(set(got)) == manifest["rows_out"] == 1200
    assert sorted(got) == sorted(expected)


@pytest.mark.ci
def test_two_workers_one_per_node_write_the_model_to_the_store_log_once_and_match_one_worker(
    cluster, s3, job_folder
):
    """The CLI, attached to the cluster as a user's driver: 2 workers placed one per worker node
    (STRICT_SPREAD), storage_path and output_dir on the store. The model directory is complete
    there, each worker line is printed once, nothing holds the secret, and the weights equal one
    worker's at the same global batch (exact-resume determinism, now across nodes)."""
    import numpy as np

    from albert_ray import modeldir
    from albert_ray.finetune.config import load_job_config
    from albert_ray.finetune.driver import train_in_process

    head, _ = cluster
    common = [
        "data.max_train_examples=96",
        "train.epochs=1",
        "model.dropout=0",
        "train.log_every=0",
        "train.shard=deterministic",
        "train.learning_rate=1e-3",
        "train.lr_scaling=none",
        "model.max_len=64",
        "train.precision=float32",  # N workers = 1 worker within 1e-4 is float32's; bfloat16 rounds the split sums
    ]
    out = f"s3://{BUCKET}/runs"
    cmd = [
        sys.executable,
        "-m",
        "albert_ray.cli",
        "train",
        "--config",
        "jobs/configs/sample_ner.yaml",
        f"output_dir={out}",
        f"storage_path={out}/ray",
        f"ray_address={head.address}",
        "train.batch_size=8",
        "train.num_workers=2",
        "train.cpus_per_worker=0.5",
        "train.placement_strategy=STRICT_SPREAD",
        *common,
    ]
    env = {**os.environ, **{k: v for k, v in head.client_env().items() if k != "RAY_ADDRESS"}}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    text = run.stdout + run.stderr
    assert run.returncode == 0, text[-3000:]
    assert SECRET not in text and SECRET not in " ".join(cmd)
    assert len(re.findall(r"run sample_ner: task=ner", text)) == 1, text[-3000:]
    assert len(re.findall(r"epoch 1/1: loss ", text)) == 1, text[-3000:]
    files = modeldir.paths.files_under(f"{out}/sample_ner/model")
    assert set(files) >= {
        "model.weights.h5",
        "model.json",
        "vocab.txt",
        "job.json",
        "metrics.json",
        "report.txt",
        "report.html",
        "curves.png",
    }
    assert "optimizer.npz" not in files
    assert not Path("s3:").exists()  # no local folder named after the URI
    assert _grep_store(s3, "runs", SECRET) == []
    assert modeldir.paths.files_under(f"{out}/ray/sample_ner/tensorboard")  # the scalars reached the store

    one = train_in_process(
        load_job_config(
            "jobs/configs/sample_ner.yaml",
            [f"output_dir={job_folder / 'one'}", "train.batch_size=16", *common],
        )
    )
    from test_ray_training import _weights

    w1, w2 = _weights(one["model_dir"]), _weights(modeldir.local_copy(f"{out}/sample_ner/model"))
    assert w1.keys() == w2.keys() and len(w1) > 20
    for k in w1:
        np.testing.assert_allclose(w1[k], w2[k], atol=2e-5, rtol=1e-4, err_msg=k)
