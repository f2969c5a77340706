"""Cluster configs checked offline, and a real job submission to a local Ray head."""

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load(path):
    return yaml.safe_load((ROOT / path).read_text())


def test_runtime_env_sets_legacy_keras_and_excludes_the_venv():
    from albert_ray.runtime.quiet import SETUP_HOOK

    for name in ("cluster/runtime_env.yaml", "cluster/runtime_env_pip.yaml"):
        env = load(name)
        assert env["env_vars"]["TF_USE_LEGACY_KERAS"] == "1"
        assert ".venv" in env["excludes"] and ".git" in env["excludes"]
        assert env["worker_process_setup_hook"] == SETUP_HOOK
    job_env = yaml.safe_load(load("cluster/kuberay/rayjob.yaml")["spec"]["runtimeEnvYAML"])
    assert (
        job_env["worker_process_setup_hook"] == SETUP_HOOK
        and job_env["env_vars"]["TF_USE_LEGACY_KERAS"] == "1"
    )
    module, function = SETUP_HOOK.rsplit(".", 1)  # what Ray imports in every worker
    assert callable(getattr(__import__(module, fromlist=[function]), function))
    pins = load("cluster/runtime_env_pip.yaml")["pip"]["packages"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    for pin in pins:  # the pip runtime env installs exactly the project's pins
        assert f'"{pin}"' in pyproject, pin


def test_kuberay_manifests():
    cluster, job = load("cluster/kuberay/raycluster.yaml"), load("cluster/kuberay/rayjob.yaml")
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == "2.60.0"
        gpu = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert gpu["nvidia.com/gpu"] == "1"
    train_step, label_step = (step.split() for step in job["spec"]["entrypoint"].split("&&"))
    assert train_step[:2] == ["python", "jobs/train.py"] and label_step[:2] == [
        "python",
        "jobs/label_corpus.py",
    ]
    config = train_step[train_step.index("--config") + 1]
    assert (ROOT / config).is_file()
    # it keeps what it makes: every artifact at a URI, the labels made by the model just trained
    settings = dict(t.split("=", 1) for t in train_step if "=" in t)
    flags = {
        label_step[i]: label_step[i + 1]
        for i in range(2, len(label_step) - 1)
        if label_step[i].startswith("--")
    }
    assert all(
        v.startswith("s3://")
        for v in (
            settings["output_dir"],
            settings["storage_path"],
            flags["--model"],
            flags["--input"],
            flags["--output"],
        )
    )
    from albert_ray.finetune.config import load_job_config

    name = load_job_config(ROOT / config).name
    assert flags["--model"] == f"{settings['output_dir']}/{name}/model"
    assert settings["train.placement_strategy"] == "STRICT_SPREAD"
    # credentials from a Secret in every pod, never on the command line
    assert "@" not in job["spec"]["entrypoint"] and "AWS_SECRET" not in job["spec"]["runtimeEnvYAML"]
    spec = job["spec"]["rayClusterSpec"]
    pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    assert all(
        p["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "albert-ray-s3"}}]
        for p in pods
    )


def test_ray_up_config_has_cpu_head_and_gpu_workers():
    cfg = load("cluster/ray_up.yaml")
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"]["CPU"] == 0
    assert {t for t, v in types.items() if v["resources"].get("GPU")} == {"gpu_16g", "gpu_24g", "gpu_80g_x8"}
    docker = (ROOT / "cluster/Dockerfile").read_text()
    assert "rayproject/ray:2.60.0-py311" in docker and "TF_USE_LEGACY_KERAS=1" in docker


def test_job_entry_points_are_thin():
    for name in ("train", "evaluate", "params", "label_corpus"):
        text = (ROOT / "jobs" / f"{name}.py").read_text()
        assert "from albert_ray.cli import main" in text and len(text.splitlines()) < 20


def _submit(cluster, entrypoint):
    import json
    import subprocess

    env = {**os.environ, **cluster.client_env()}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "job_client.py"),
            cluster.dashboard_url,
            str(ROOT),
            str(ROOT / "cluster" / "runtime_env.yaml"),
            entrypoint,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_free_ports_are_distinct_and_skip_rays_default_ports(monkeypatch):
    """The kernel may hand out 52365, the port Ray's dashboard agent takes by default: a local
    Ray given that as its GCS port refused to start (seen in CI)."""
    import socket

    from albert_ray.runtime import localcluster

    handed = iter([52365, 40001, 8265, 40002, 40003])
    bound, closed = [], []

    class Kernel:
        def bind(self, address):
            self.port = next(handed)
            bound.append(self.port)

        def getsockname(self):
            return ("127.0.0.1", self.port)

        def close(self):
            closed.append(self.port)

    monkeypatch.setattr(socket, "socket", Kernel)
    assert localcluster.free_ports(3) == [40001, 40002, 40003]
    assert sorted(closed) == sorted(bound) == [8265, 40001, 40002, 40003, 52365]  # all held until the end


@pytest.mark.slow
@pytest.mark.ci
def test_submit_train_then_label_to_a_real_local_cluster(tmp_path):
    from albert_ray.runtime.localcluster import _alive, start_local_cluster

    cluster = start_local_cluster(num_cpus=2, state_dir=tmp_path / "cluster")
    try:
        out = tmp_path / "out"
        job = _submit(
            cluster,
            f"python jobs/train.py --config jobs/configs/sample_ner.yaml output_dir={out} "
            "train.epochs=1 data.max_train_examples=64 train.log_every=0",
        )
        assert job["status"] == "SUCCEEDED", job["logs"][-3000:]
        assert f"model saved to {out}/sample_ner/model" in job["logs"] and "micro avg" in job["logs"]
        lines = ["张伟昨天在北京会见了新华社代表团。", "据人民日报社报道，王芳已经抵达上海。"] * 10
        (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        job = _submit(
            cluster,
            f"python jobs/label_corpus.py --model {out}/sample_ner/model "
            f"--input {tmp_path / 'corpus.txt'} --output {out}/labels",
        )
        assert job["status"] == "SUCCEEDED", job["logs"][-3000:]
        assert "rows in 20 = out 20 + quarantined 0" in job["logs"]
        import pyarrow.parquet as pq

        table = pq.read_table(out / "labels")
        assert table.num_rows == 20 and sorted(table.column("line").to_pylist()) == list(range(1, 21))
    finally:
        cluster.stop()
    assert not [p for p in cluster.pids if _alive(p)]


@pytest.mark.slow
@pytest.mark.ci
def test_local_cluster_listens_on_loopback_only_and_stop_leaves_nothing(tmp_path):
    import socket

    from albert_ray.runtime.localcluster import (
        _alive,
        cluster_processes,
        is_loopback,
        listening_sockets,
        start_local_cluster,
    )

    cluster = start_local_cluster(num_cpus=1, state_dir=tmp_path / "c")
    try:
        procs = cluster_processes(cluster.temp_dir)
        sockets = listening_sockets(procs)
        commands = {Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].decode() for p, _, _ in sockets}
        assert {
            "ray::DashboardAgent",
            "ray::RuntimeEnvAgent",
        } <= commands  # the processes `stop` used to miss
        assert len(sockets) >= 8
        assert [s for s in sockets if not is_loopback(s[1])] == []
        assert (tmp_path / "c" / "auth_token").stat().st_mode & 0o777 == 0o600
    finally:
        cluster.stop()
    assert [p for p in procs if _alive(p)] == []
    assert cluster_processes(cluster.temp_dir) == set()
    # No port the cluster listened on accepts a connection from anything of it. Another program
    # (this test's own process included: an earlier test's Ray driver lives here) may have been
    # handed a freed port since, and a connect to a closed ephemeral port can meet itself (TCP
    # self-connect): what counts is who owns a listener that answers.
    import os

    from albert_ray.runtime.localcluster import _mentions, _processes

    everyone = _processes() + [os.getpid()]
    for _, address, port in sockets:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
            s.settimeout(2)
            if s.connect_ex((address, port)) != 0 or s.getsockname()[1] == port:
                continue
        owners = {pid for pid, _, p in listening_sockets(everyone) if p == port}
        assert [o for o in owners if o in procs or _mentions(o, cluster.temp_dir)] == [], (address, port)


@pytest.mark.slow
@pytest.mark.ci
def test_the_local_ray_of_train_and_label_listens_on_loopback_only():
    import subprocess

    code = (
        "import os, json; from albert_ray.runtime.attach import init_ray; init_ray(num_cpus=1, dashboard=False); "
        "from albert_ray.runtime.localcluster import descendants, listening_sockets; "
        "print(json.dumps(listening_sockets(descendants(os.getpid()) | {os.getpid()})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    sockets = json.loads(out.stdout.strip().splitlines()[-1])
    from albert_ray.runtime.localcluster import is_loopback

    assert len(sockets) >= 4
    assert [s for s in sockets if not is_loopback(s[1])] == []


@pytest.mark.slow  # not in CI: a regression guard for one Ray state-API lookup
def test_workers_of_a_local_ray_find_it_beside_a_running_cluster(tmp_path):
    """Ray Train's placement-group cleaner asks the state API, from a worker, whether the run's
    controller is alive; with `albert-ray cluster start` running too, that call used to fail
    with "Found multiple active Ray instances"."""
    import subprocess

    from albert_ray.runtime.localcluster import start_local_cluster

    code = (
        "import json, ray; from albert_ray.runtime.attach import init_ray; init_ray(num_cpus=1); "
        "from ray.train.v2._internal.state.util import is_actor_alive\n"
        "@ray.remote(num_cpus=0)\nclass A:\n    def ping(self): return 1\n"
        "@ray.remote(num_cpus=0)\ndef probe(actor_id):\n"
        "    from ray._private.services import canonicalize_bootstrap_address_or_die\n"
        "    return canonicalize_bootstrap_address_or_die(None), bool(is_actor_alive(actor_id, timeout=30))\n"
        "a = A.remote(); ray.get(a.ping.remote())\n"
        "found, alive = ray.get(probe.remote(a._actor_id.hex()))\n"
        "print(json.dumps([found, ray.get_runtime_context().gcs_address, alive]))"
    )
    cluster = start_local_cluster(num_cpus=1, state_dir=tmp_path / "c")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        # and the other way round: a job on the cluster, beside the local Ray of the run above
        # (gone by now: a second local Ray in the background keeps the machine at two)
        background = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from albert_ray.runtime.attach import init_ray; "
                "init_ray(num_cpus=1); print('up', flush=True); import time; time.sleep(600)",
            ],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert background.stdout.readline().strip() == "up"
            probe = ROOT / "tests" / "data" / "probe_ray_address.py"
            job = _submit(cluster, f"python {probe}")
        finally:
            os.killpg(background.pid, 9)
    finally:
        cluster.stop()
    assert out.returncode == 0, out.stderr[-2000:]
    found, own, alive = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == own and own != cluster.address and alive is True
    assert job["status"] == "SUCCEEDED", job["logs"][-2000:]
    assert f'probe: ["{cluster.address}", "{cluster.address}", true]' in job["logs"]
