"""A single-node Ray cluster for local use and tests: ``ray start --head`` on 127.0.0.1 with
free ports, token authentication on (its own token file), stopped by the process ids it
started — never ``ray stop``, which kills every Ray process on the machine.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    """A running head node. ``client_env()`` is what a client (``ray job submit``,
    ``JobSubmissionClient``, ``ray.init``) needs in its environment."""

    address: str          # GCS address, host:port
    dashboard_url: str    # job server, http://127.0.0.1:port
    temp_dir: str
    token_path: str
    pids: list[int]

    def client_env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path, "RAY_ADDRESS": self.dashboard_url}

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "LocalCluster":
        return cls(**json.loads(Path(path).read_text()))

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate exactly the processes this cluster started (then SIGKILL stragglers)."""
        pids = set(self.pids) | set(_pids_using(self.temp_dir))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + timeout
            while time.time() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.2)
            pids = {p for p in pids if _alive(p)}
            if not pids:
                break
        log.info("stopped local Ray cluster %s", self.address)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _pids_using(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (the cluster's private temp dir)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            out.append(int(entry.name))
    return out


def start_local_cluster(num_cpus: int | None = None, state_dir: str | Path | None = None,
                        ray_bin: str | None = None) -> LocalCluster:
    """Start a head node on 127.0.0.1 with free ports, using this Python's ``ray``.

    Jobs run with the head's Python, so start it from the project's virtual environment.
    """
    state = Path(state_dir or tempfile.mkdtemp(prefix="albert-ray-"))
    state.mkdir(parents=True, exist_ok=True)
    # a short private temp dir: Ray's unix sockets live under it (107-character limit)
    temp_dir = tempfile.mkdtemp(prefix="ar", dir="/tmp")
    token_path = state / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    port, dash = free_port(), free_port()
    ray_bin = ray_bin or str(Path(sys.executable).with_name("ray"))
    # `python` in job entrypoints must be this environment's Python
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path),
           "TF_USE_LEGACY_KERAS": "1", "PATH": path}
    env.pop("RAY_ADDRESS", None)
    cmd = [ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp_dir}",
           f"--ray-client-server-port={free_port()}", "--disable-usage-stats",
           # the agents' default ports (e.g. 52365) clash with any other Ray on this machine:
           # the job server then answers "No available agent to submit job" forever
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
           f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    pids = _pids_using(temp_dir)
    cluster = LocalCluster(address=f"127.0.0.1:{port}", dashboard_url=f"http://127.0.0.1:{dash}",
                           temp_dir=temp_dir, token_path=str(token_path), pids=pids)
    if proc.returncode != 0:
        cluster.stop()
        raise RuntimeError(f"ray start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    _wait_for_dashboard(cluster)
    cluster.pids = sorted(set(pids) | set(_pids_using(temp_dir)))
    cluster.save(state / "cluster.json")
    log.info("local Ray cluster at %s, dashboard %s, %d processes", cluster.address, cluster.dashboard_url,
             len(cluster.pids))
    return cluster


def _wait_for_dashboard(cluster: LocalCluster, timeout: float = 90.0) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(cluster.dashboard_url + "/api/version", timeout=2)
            return
        except OSError as exc:  # 401 with token auth still proves the server is up
            if getattr(exc, "code", None) in (401, 403):
                return
            time.sleep(1)
    cluster.stop()
    raise RuntimeError(f"the dashboard / job server at {cluster.dashboard_url} did not come up in {timeout:.0f} s")
