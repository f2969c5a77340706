"""A single-node Ray cluster for local use and tests: ``ray start --head`` on 127.0.0.1 with
free ports, token authentication on (its own token file), stopped by the process ids it
started — never ``ray stop``, which kills every Ray process on the machine.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Ray replaces a loopback --node-ip-address by the machine's address (services.
# resolve_ip_for_localhost) unless "clusters" are disabled, as on macOS / Windows; with the node
# address 127.0.0.1 its servers bind to loopback. One node only, which is what a local cluster is.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


# Ray's fixed default ports: a port the kernel hands out may be one of them (52365, the dashboard
# agent's, lies in Linux's ephemeral range) and a Ray started with only some ports chosen then
# refuses to start: "Ray component dashboard_agent_http is trying to use a port number 52365
# that is used by other components" (seen in CI, 1 start in ~28 000). Ray 2.60's defaults:
# ray_constants DEFAULT_PORT, DEFAULT_DASHBOARD_PORT, DEFAULT_DASHBOARD_AGENT_LISTEN_PORT, and the
# client server's 10001 (scripts.py); its default worker ports (10002-19999) lie below the range
RAY_DEFAULT_PORTS = frozenset({6379, 8265, 10001, 52365})


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports, none of them a Ray default: all are held open until
    all are chosen, so that two calls in a row cannot return the same port."""
    held: list[socket.socket] = []  # a Ray default is held too, so the kernel moves on from it
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] not in RAY_DEFAULT_PORTS:
                ports.append(s.getsockname()[1])
        return ports
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class LocalCluster:
    """A running head node. ``client_env()`` is what a client (``ray job submit``,
    ``JobSubmissionClient``, ``ray.init``) needs in its environment."""

    address: str  # GCS address, host:port
    dashboard_url: str  # job server, http://127.0.0.1:port
    temp_dir: str
    token_path: str
    pids: list[int]

    def client_env(self) -> dict[str, str]:
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_path,
            "RAY_ADDRESS": self.dashboard_url,
        }

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "LocalCluster":
        return cls(**json.loads(Path(path).read_text()))

    def stop(self, grace: float = 5.0) -> None:
        """Stop every process of this cluster — found now, by its private temp dir (named on the
        command line or held open as a log file) and as descendants of those — with SIGTERM, then
        SIGKILL after ``grace`` seconds (the agents ignore SIGTERM). Never ``ray stop``."""
        pids = cluster_processes(self.temp_dir) | {
            p for p in self.pids if _alive(p) and _mentions(p, self.temp_dir)
        }
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + grace
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
    try:  # a zombie is dead for our purposes; the state follows the ")" that ends the name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # gone between the two looks (ENOENT, or ESRCH while reading)
        return False


def _processes() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and int(e.name) != os.getpid()]


def _mentions(pid: int, marker: str) -> bool:
    """Whether a process names ``marker`` on its command line or holds a file under it open."""
    try:
        if marker in (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        ):
            return True
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(marker):
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False


def descendants(root: int) -> set[int]:
    """Every process below ``root`` in the process tree."""
    return _below({root}, include=False)


def _below(roots: set[int], include: bool = True) -> set[int]:
    parent = {}
    for p in _processes():
        try:
            parent[p] = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found = set(roots)
    grew = True
    while grew:
        more = {p for p, pp in parent.items() if pp in found and p not in found}
        found |= more
        grew = bool(more)
    return found if include else found - roots


def cluster_processes(temp_dir: str) -> set[int]:
    """The processes of the cluster whose private temp dir is ``temp_dir``: those naming it or
    holding a file under it open (Ray's agents and client server do not name it, but keep their
    logs there), and all their descendants."""
    return _below({p for p in _processes() if _mentions(p, temp_dir)})


def listening_sockets(pids) -> list[tuple[int, str, int]]:
    """``(pid, address, port)`` of every TCP socket the processes listen on (from /proc)."""
    inodes = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            rows = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            parts = row.split()
            if parts[3] != "0A":  # LISTEN
                continue
            ip_hex, port_hex = parts[1].split(":")
            raw = bytes.fromhex(ip_hex)
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian words
            inodes[parts[9]] = (socket.inet_ntop(family, raw), int(port_hex, 16))
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                out.append((pid, *inodes[link[8:-1]]))
    return sorted(out)


def is_loopback(address: str) -> bool:
    return (
        address.startswith("127.")
        or address in ("::1", "::ffff:127.0.0.1")
        or address.startswith("::ffff:127.")
    )


def start_local_cluster(
    num_cpus: int | None = None, state_dir: str | Path | None = None, ray_bin: str | None = None
) -> LocalCluster:
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
    port, dash, client, agent_http, agent_grpc, metrics, runtime_env, node_manager, object_manager = (
        free_ports(9)
    )
    ray_bin = ray_bin or str(Path(sys.executable).with_name("ray"))
    # `python` in job entrypoints must be this environment's Python
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        **LOOPBACK_ENV,
        "TF_USE_LEGACY_KERAS": "1",
        "PATH": path,
    }
    # the processes it starts (workers too) inherit this: Ray's own state-API calls in a worker
    # (Ray Train's placement-group cleaner) then find this cluster, not "the" Ray of the machine,
    # which fails with "Found multiple active Ray instances" beside another Ray
    env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    cmd = [
        ray_bin,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--temp-dir={temp_dir}",
        f"--ray-client-server-port={client}",
        "--disable-usage-stats",
        # the agents' default ports (e.g. 52365) clash with any other Ray on this machine:
        # the job server then answers "No available agent to submit job" forever
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    pids = sorted(cluster_processes(temp_dir))
    cluster = LocalCluster(
        address=f"127.0.0.1:{port}",
        dashboard_url=f"http://127.0.0.1:{dash}",
        temp_dir=temp_dir,
        token_path=str(token_path),
        pids=pids,
    )
    if proc.returncode != 0:
        cluster.stop()
        raise RuntimeError(f"ray start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    _wait_for_dashboard(cluster)
    cluster.pids = sorted(set(pids) | cluster_processes(temp_dir))
    cluster.save(state / "cluster.json")
    log.info(
        "local Ray cluster at %s, dashboard %s, %d processes",
        cluster.address,
        cluster.dashboard_url,
        len(cluster.pids),
    )
    return cluster


def _wait_for_dashboard(cluster: LocalCluster, timeout: float = 90.0) -> None:
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
    raise RuntimeError(
        f"the dashboard / job server at {cluster.dashboard_url} did not come up in {timeout:.0f} s"
    )


# ---- several nodes on one machine ---------------------------------------------------------------
# `ray start --address` refuses to add a node while clusters are disabled (LOOPBACK_ENV), so a
# worker node is started from Python, as ray.cluster_utils.Cluster does; with node_ip_address
# 127.0.0.1 its servers stay on loopback.  It runs under `unshare -m` with a tmpfs over Ray's
# temp dir (its own session folder and logs, as on a separate machine, each with its own log
# monitor) and over every "private" folder (the job folder the driver sees), so a test finds
# every place the code still opens the driver's disk from another node.
_NODE_MAIN = r"""
import json, sys, time
from ray._private.node import Node
from ray._private.parameter import RayParams
args = json.loads(sys.argv[1])
params = RayParams(gcs_address=args["gcs"], node_ip_address="127.0.0.1", num_cpus=args["num_cpus"], num_gpus=0,
                   temp_dir=args["temp_dir"], object_store_memory=args["object_store_bytes"], min_worker_port=0,
                   max_worker_port=0, node_manager_port=args["ports"][0], object_manager_port=args["ports"][1],
                   dashboard_agent_listen_port=args["ports"][2], metrics_agent_port=args["ports"][3],
                   runtime_env_agent_port=args["ports"][4], metrics_export_port=args["ports"][5],
                   include_log_monitor=True, resources=args["resources"])
Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
print("node started", flush=True)
while True:
    time.sleep(3600)
"""


@dataclass
class WorkerNode:
    """A worker node started by :func:`add_worker_node`: ``pid`` is its launcher, the parent of
    its raylet and agents; ``kill()`` ends it as a lost machine would end."""

    pid: int
    name: str
    log: str

    def processes(self) -> set[int]:
        return _below({self.pid}) if _alive(self.pid) else set()

    def kill(self) -> None:
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def add_worker_node(
    cluster: LocalCluster,
    num_cpus: int = 1,
    private_dirs: tuple[str, ...] = (),
    object_store_mb: int = 256,
    name: str = "worker",
    timeout: float = 90.0,
) -> WorkerNode:
    """Start a worker node of ``cluster`` on 127.0.0.1 in a private mount namespace (root only:
    ``unshare -m``), where Ray's temp dir and each of ``private_dirs`` are empty tmpfs folders.

    Raises:
        RuntimeError: the node did not join within ``timeout`` seconds (its log is in the message).
    """
    state = Path(cluster.token_path).parent
    args = {
        "gcs": cluster.address,
        "num_cpus": num_cpus,
        "temp_dir": cluster.temp_dir,
        "object_store_bytes": object_store_mb << 20,
        "ports": free_ports(6),
        "resources": {f"node:{name}": 1},
    }
    mounts = " && ".join(
        f"mkdir -p {shlex.quote(d)} && mount -t tmpfs -o size=256m tmpfs {shlex.quote(d)}"
        for d in (cluster.temp_dir, *private_dirs)
    )
    python = shlex.join([sys.executable, "-c", _NODE_MAIN, json.dumps(args)])
    launch = f"{mounts} && exec {python}"
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": cluster.token_path,
        **LOOPBACK_ENV,
        "TF_USE_LEGACY_KERAS": "1",
        "RAY_ADDRESS": cluster.address,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    log_path = state / f"{name}.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", launch],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    node = WorkerNode(pid=proc.pid, name=name, log=str(log_path))
    deadline = time.time() + timeout
    while "node started" not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.time() > deadline:
            node.kill()
            raise RuntimeError(
                f"worker node {name} did not start: {log_path.read_text(errors='replace')[-2000:]}"
            )
        time.sleep(0.3)
    cluster.pids = sorted(set(cluster.pids) | node.processes())
    return node
