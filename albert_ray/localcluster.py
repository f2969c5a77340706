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

    def stop(self, grace: float = 5.0) -> None:
        """Stop every process of this cluster — found now, by its private temp dir (named on the
        command line or held open as a log file) and as descendants of those — with SIGTERM, then
        SIGKILL after ``grace`` seconds (the agents ignore SIGTERM). Never ``ray stop``."""
        pids = cluster_processes(self.temp_dir) | {p for p in self.pids if _alive(p) and _mentions(p, self.temp_dir)}
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
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _processes() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and int(e.name) != os.getpid()]


def _mentions(pid: int, marker: str) -> bool:
    """Whether a process names ``marker`` on its command line or holds a file under it open."""
    try:
        if marker in (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")):
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
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian words
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
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1") or \
        address.startswith("::ffff:127.")


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
    port, dash, client, agent_http, agent_grpc, metrics, runtime_env, node_manager, object_manager = free_ports(9)
    ray_bin = ray_bin or str(Path(sys.executable).with_name("ray"))
    # `python` in job entrypoints must be this environment's Python
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), **LOOPBACK_ENV,
           "TF_USE_LEGACY_KERAS": "1", "PATH": path}
    # the processes it starts (workers too) inherit this: Ray's own state-API calls in a worker
    # (Ray Train's placement-group cleaner) then find this cluster, not "the" Ray of the machine,
    # which fails with "Found multiple active Ray instances" beside another Ray
    env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    cmd = [ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp_dir}",
           f"--ray-client-server-port={client}", "--disable-usage-stats",
           # the agents' default ports (e.g. 52365) clash with any other Ray on this machine:
           # the job server then answers "No available agent to submit job" forever
           f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
           f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    pids = sorted(cluster_processes(temp_dir))
    cluster = LocalCluster(address=f"127.0.0.1:{port}", dashboard_url=f"http://127.0.0.1:{dash}",
                           temp_dir=temp_dir, token_path=str(token_path), pids=pids)
    if proc.returncode != 0:
        cluster.stop()
        raise RuntimeError(f"ray start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    _wait_for_dashboard(cluster)
    cluster.pids = sorted(set(pids) | cluster_processes(temp_dir))
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
