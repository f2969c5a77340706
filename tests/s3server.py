"""An S3-compatible server (moto, a dev dependency) on 127.0.0.1 for tests, stopped by its PID."""

import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from albert_ray.runtime.localcluster import free_port


@contextmanager
def moto(log_path: Path):
    """Start ``moto_server`` on a free loopback port; yields ``127.0.0.1:<port>``."""
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto server did not start: {log_path.read_text()}") from None
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
