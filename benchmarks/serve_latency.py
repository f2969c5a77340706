"""Online serving side by side, in one run on one machine, for two models (the sample NER model
and the albert-tiny shape with its head):

(s) ``albert-ray serve``: Ray Serve, the model replica answering HTTP itself, texts batched
    across requests (``@serve.batch``), through Ray Serve's HTTP proxy (the default) and, from
    the same server, through the model replica's own HTTP port (Ray Serve's direct ingress,
    ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``: no proxy hop; Ray's own production route to it is the
    HAProxy ingress);
(a) the reference projects' design: one text per request, one request at a time, no batching —
    an ``http.server`` app written here around the same ``Labeler`` (what a Flask debug server
    with a global model lock does);
(b) the in-process ``Labeler`` on one text, and the HTTP round trip of an empty route of (a).

An asyncio client on 127.0.0.1 keeps 1 and then 32 clients sending single-text requests for
``--seconds`` each: requests/s, p50 / p95 / p99 latency and rows/s. All three use the same
precision (``auto`` resolved on this CPU); (a) and (b) use TensorFlow's default threads, (s) its
defaults (one replica holding 1 CPU: the proxy and the client need the other).

Targets (issue #35): with 32 clients (s) serves >= 5x the requests/s of (a), and its p99 is at
most 2x its own p50 with 1 client; with 1 client its p50 is within 20 % of (b): one Labeler call
plus the empty route's round trip.

Prints a table, writes benchmarks/results/serve_latency.json (with the machine's CPU and commit).

usage: python benchmarks/serve_latency.py [--seconds 60] [--clients 1 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from albert_ray.runtime.hardware import machine_record  # noqa: E402

TINY_CONFIG = ROOT.parent / "shared" / "corpora" / "albert_zh" / "albert_config_tiny.json"

REFERENCE_SERVER = r"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
sys.path.insert(0, sys.argv[3])
from albert_ray.inference.labeler import Labeler
labeler = Labeler.from_dir(sys.argv[1], precision=sys.argv[4])
labeler.predict(["warm-up"])

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, payload):
        body = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # the empty route: the HTTP round trip alone
        self._send({})

    def do_POST(self):  # the reference: {"text": ...} -> one prediction
        text = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"]
        self._send(labeler.predict([text])[0])

HTTPServer.request_queue_size = 128  # the listen backlog of Flask's (werkzeug's) development server
HTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
"""


def make_models(work: Path) -> dict[str, str]:
    """The sample NER model (trained a little here) and the albert-tiny shape with the same head
    (untrained: latency does not depend on the weights)."""
    from dataclasses import replace

    from albert_ray import modeldir
    from albert_ray.finetune.config import load_job_config
    from albert_ray.finetune.driver import train_in_process
    from albert_ray.model.encoder_config import EncoderConfig

    sample = train_in_process(
        load_job_config(
            ROOT / "jobs/configs/sample_ner.yaml",
            [f"output_dir={work}", "train.epochs=1", "data.max_train_examples=256", "train.log_every=0"],
        )
    )["model_dir"]
    models = {"sample_ner": sample}
    if TINY_CONFIG.is_file():
        spec, vocab = modeldir.check(sample)
        tiny = replace(EncoderConfig.from_json_file(TINY_CONFIG), vocab_size=len(vocab))
        models["albert_tiny_ner"] = str(
            modeldir.create(work / "albert_tiny_ner", replace(spec, encoder=tiny), vocab)
        )
    return models


def texts() -> list[str]:
    lines = (ROOT / "data" / "demo_corpus" / "news.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()]


async def load(url: str, body_of, clients: int, seconds: float, sentences: list[str]) -> dict:
    """``clients`` loops sending one single-text request after another for ``seconds``."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(k: int, session) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < stop:
            began = time.perf_counter()
            try:
                async with session.post(url, json=body_of(sentences[i % len(sentences)])) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):  # a server that cannot take the connection
                ok = False
            if ok:
                latencies.append(time.perf_counter() - began)
            else:
                errors += 1
            i += clients

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began = time.perf_counter()
        await asyncio.gather(*(client(k, session) for k in range(clients)))
        elapsed = time.perf_counter() - began
    return summary(latencies, elapsed, errors)


def summary(latencies: list[float], elapsed: float, errors: int = 0) -> dict:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    if not ordered:
        return {
            "requests": 0,
            "requests_per_second": 0.0,
            "rows_per_second": 0.0,
            "p50_ms": None,
            "p95_ms": None,
            "p99_ms": None,
            "errors": errors,
        }
    return {
        "requests": len(ordered),
        "requests_per_second": round(len(ordered) / elapsed, 1),
        "rows_per_second": round(len(ordered) / elapsed, 1),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "errors": errors,
    }


def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    import urllib.request

    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not ready: {log.read_text()}")


def two_free_ports() -> int:
    """A port ``p`` with ``p + 1`` free as well."""
    import socket

    from albert_ray.runtime.localcluster import free_port

    while True:
        first = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", first + 1))
                return first
            except OSError:
                continue


def model_port(name: str, ports: tuple[int, ...]) -> int:
    """Which of the direct-ingress ports is the model replica's (the other is the index's, whose
    predict route answers 503): the first to label a text, polled until one does."""
    import urllib.request

    for _ in range(120):
        for port in ports:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/models/{name}:predict",
                data=json.dumps({"texts": ["测试"]}).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return port
            except OSError:
                pass
        time.sleep(1)
    raise RuntimeError(f"no direct-ingress port of {ports} labels for model {name}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


def in_process(model: str, precision: str, sentences: list[str], seconds: float) -> dict:
    """One Labeler call on one text, back to back, in this process."""
    from albert_ray.inference.labeler import Labeler

    labeler = Labeler.from_dir(model, precision=precision)
    labeler.predict(["warm-up"])
    latencies, began, i = [], time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        t = time.perf_counter()
        labeler.predict([sentences[i % len(sentences)]])
        latencies.append(time.perf_counter() - t)
        i += 1
    return summary(latencies, time.perf_counter() - began)


def measure(name: str, model: str, args, precision: str, work: Path) -> list[dict]:
    from albert_ray.runtime.localcluster import free_port

    sentences, rows = texts(), []
    port, direct = free_port(), two_free_ports()
    log = work / f"serve-{name}.log"
    env = {
        **os.environ,
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",  # the model replica and the index also listen ...
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(direct),  # ... on these two, one each
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(direct + 2),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",  # stop in seconds, not 30
    }
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "albert_ray.cli",
            "serve",
            "--model",
            f"{name}={model}",
            "--port",
            str(port),
            "--precision",
            precision,
        ],  # the defaults: 1 replica, 1 CPU
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", serve, log)
        direct = model_port(name, (direct, direct + 1))
        for system, at in (("albert-ray serve", port), ("albert-ray serve, direct ingress", direct)):
            for clients in args.clients:
                result = asyncio.run(
                    load(
                        f"http://127.0.0.1:{at}/v1/models/{name}:predict",
                        lambda t: {"texts": [t]},
                        clients,
                        args.seconds,
                        sentences,
                    )
                )
                rows.append({"model": name, "system": system, "clients": clients, **result})
                print(f"  {rows[-1]}", flush=True)
    finally:
        stop(serve)
    port = free_port()
    log = work / f"reference-{name}.log"
    reference = subprocess.Popen(
        [sys.executable, "-c", REFERENCE_SERVER, model, str(port), str(ROOT), precision],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/", reference, log)
        for clients in args.clients:
            result = asyncio.run(
                load(f"http://127.0.0.1:{port}/", lambda t: {"text": t}, clients, args.seconds, sentences)
            )
            rows.append(
                {"model": name, "system": "reference (one text per request)", "clients": clients, **result}
            )
            print(f"  {rows[-1]}", flush=True)
        empty = asyncio.run(empty_route(f"http://127.0.0.1:{port}/", min(args.seconds, 10)))
        rows.append({"model": name, "system": "HTTP round trip (empty route)", "clients": 1, **empty})
    finally:
        stop(reference)
    rows.append(
        {
            "model": name,
            "system": "in-process Labeler",
            "clients": 1,
            **in_process(model, precision, sentences, min(args.seconds, 20)),
        }
    )
    return rows


async def empty_route(url: str, seconds: float) -> dict:
    import aiohttp

    latencies, began = [], time.perf_counter()
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() - began < seconds:
            t = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
            latencies.append(time.perf_counter() - t)
    return summary(latencies, time.perf_counter() - began)


def verdicts(rows: list[dict], most: int) -> dict:
    """The issue's three targets, per model and serving path, from this run's rows."""

    def row(model: str, system: str, clients: int) -> dict:
        return next(
            r for r in rows if r["model"] == model and r["system"] == system and r["clients"] == clients
        )

    out = {}
    for model, path in sorted(
        {(r["model"], r["system"]) for r in rows if r["system"].startswith("albert-ray")}
    ):
        key = f"{model}, {path}"
        serve_many, ref_many = row(model, path, most), row(model, "reference (one text per request)", most)
        serve_one = row(model, path, 1)
        if serve_many["p99_ms"] is None or serve_one["p50_ms"] is None:
            out[key] = {"answered": False}  # every request failed: nothing to compare
            continue
        floor = (
            row(model, "in-process Labeler", 1)["p50_ms"]
            + row(model, "HTTP round trip (empty route)", 1)["p50_ms"]
        )
        out[key] = {
            f"requests_per_second_vs_reference_at_{most}": round(
                serve_many["requests_per_second"] / ref_many["requests_per_second"], 2
            ),
            f"p99_at_{most}_over_p50_at_1": round(serve_many["p99_ms"] / serve_one["p50_ms"], 2),
            "p50_at_1_over_labeler_plus_round_trip": round(serve_one["p50_ms"] / floor, 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "serve_latency.json"))
    args = parser.parse_args()
    from albert_ray.inference.labeler import resolve_precision

    precision = resolve_precision("auto")
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    rows = []
    for name, model in make_models(work).items():
        print(f"{name}: measuring ({args.seconds:g} s per load)", flush=True)
        rows += measure(name, model, args, precision, work)
    print(
        f"\n{'model':<16} {'system':<34} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'rows/s':>8} {'errors':>6}"
    )
    for r in rows:
        ms = " ".join("       -" if r[k] is None else f"{r[k]:>8.2f}" for k in ("p50_ms", "p95_ms", "p99_ms"))
        print(
            f"{r['model']:<16} {r['system']:<34} {r['clients']:>7} {r['requests_per_second']:>8.1f} "
            f"{ms} {r['rows_per_second']:>8.1f} {r['errors']:>6}"
        )
    checks = verdicts(rows, max(args.clients))
    for model, values in checks.items():
        print(f"{model}: {values}")
    result = {
        "benchmark": "serve_latency",
        "machine": machine_record(),
        "precision": precision,
        "seconds_per_load": args.seconds,
        "rows": rows,
        "targets": checks,
    }
    Path(args.output).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
