"""The label job on one node against a three-node cluster, same CPUs in all, side by side in one
run on the same corpus, model and machine.

(a) ``1 node``: a local Ray with 2 CPUs;
(b) ``3 nodes``: a head with 0 CPUs and two 1-CPU worker nodes on 127.0.0.1, each in a private
    mount namespace (``localcluster.add_worker_node``; root only), as in ``tests/test_multinode.py``.

Inputs and outputs are on an S3-compatible server (moto on 127.0.0.1) in both, so only the
number of nodes differs.  The nodes share this machine's cores, so (b) against (a) is the
overhead of spreading the job over nodes, not a speed-up.  Bytes through the object store per
row: the model's packed files once per node, plus every row's block once (an upper bound: a
block read on the node of its actor is not copied), from the manifest's text bytes.

Prints a table, writes benchmarks/results/label_nodes.json (with the machine's CPU and commit).

usage: sudo python benchmarks/label_nodes.py [--rows 20000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
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

BUCKET = "bench"


def start_moto(work: Path) -> tuple[subprocess.Popen, dict]:
    from albert_ray.runtime.localcluster import free_port

    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(work / "moto.log", "w"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(150):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    return proc, {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }


def child(nodes: int, model: str, corpus_uri: str, out_uri: str, private: str) -> dict:
    """One measurement in a fresh process: start the cluster, label, stop what was started.
    Ray is imported only once the cluster's token settings are in the environment (it reads
    them at import)."""
    from albert_ray import modeldir, paths
    from albert_ray.label.config import LabelConfig
    from albert_ray.label.run import label_corpus
    from albert_ray.runtime.attach import init_ray
    from albert_ray.runtime.localcluster import add_worker_node, start_local_cluster

    head = None
    try:
        if nodes == 1:
            init_ray(None, num_cpus=2, dashboard=False)
        else:
            head = start_local_cluster(num_cpus=0)
            for i in range(nodes - 1):
                add_worker_node(head, num_cpus=2 // (nodes - 1), private_dirs=(private,), name=f"w{i}")
            os.environ.update({k: v for k, v in head.client_env().items() if k != "RAY_ADDRESS"})
            init_ray(head.address)
        began = time.time()
        m = label_corpus(LabelConfig(model=model, inputs=(corpus_uri,), output=out_uri, progress=False))
        seconds = time.time() - began
    finally:
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()
        if head is not None:
            head.stop()
    model_bytes = sum(len(v) for v in modeldir.pack(model).values())
    text_bytes = sum(paths.files_under(corpus_uri).values())
    return {
        "nodes": nodes,
        "rows": m["rows_out"],
        "seconds": round(seconds, 2),
        "rows_per_second": round(m["rows_out"] / seconds, 1),
        "labeling_rows_per_second": m["rows_per_second"],
        "plan_seconds": m["plan_seconds"],
        "first_commit_seconds": m["first_commit_seconds"],
        "units": m["units"],
        "model_bytes_per_node": model_bytes,
        "object_store_bytes_per_row": round(
            (model_bytes * max(1, nodes - 1) + text_bytes) / m["rows_out"], 1
        ),
    }


def driver_costs(work: Path, files: int = 2000, units: int = 500) -> dict:
    """What the driver does alone, whatever the cluster's size: list and plan ``files`` input
    objects on the store (one listing, then sizes), and commit ``units`` unit records (one JSON
    object each, written one after another as the actors report)."""
    import pyarrow.fs as pafs

    from albert_ray.io.corpus import expand_inputs, plan_units
    from albert_ray.label.store import OutputStore

    fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}")
    for i in range(files):
        with fs.open_output_stream(f"{BUCKET}/many/f{i:05d}.txt") as f:
            f.write(b"\xe5\xbc\xa0\xe4\xbc\x9f\n" * 100)
    began = time.perf_counter()
    planned = plan_units(expand_inputs([f"s3://{BUCKET}/many"]), 32 << 20)
    plan_seconds = time.perf_counter() - began
    store = OutputStore(f"s3://{BUCKET}/commits")
    record = {
        "uid": "x",
        "source": f"s3://{BUCKET}/many/f00000.txt",
        "rows_in": 100,
        "parts": ["part-1.parquet"],
        "sizes": {"part-1.parquet": [4000, 123]},
        "counts": {"PER": 100},
        "settings": {"model": "m"},
    }
    began = time.perf_counter()
    for i in range(units):
        store.write_json({**record, "uid": f"u{i}"}, "_units", f"u{i}.json")
    commit_seconds = time.perf_counter() - began
    return {
        "files": files,
        "units_planned": len(planned),
        "plan_ms_per_file": round(1000 * plan_seconds / files, 3),
        "units_committed": units,
        "commit_ms_per_unit": round(1000 * commit_seconds / units, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, interleaved")
    parser.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "label_nodes.json"))
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        nodes, model, corpus, out, private = args.child
        print(json.dumps(child(int(nodes), model, corpus, out, private)))
        return
    if os.geteuid() != 0:
        raise SystemExit("label_nodes.py starts worker nodes in private mount namespaces: run it as root")
    import pyarrow.fs as pafs

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from label_throughput import make_model, sentences

    work = Path(tempfile.mkdtemp(prefix="label-nodes-"))
    moto, env = start_moto(work)
    os.environ.update(env)
    try:
        fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}?allow_bucket_creation=true")
        fs.create_dir(BUCKET)
        make_model(Path(args.corpora), work / "model")
        base = sentences(Path(args.corpora))
        with fs.open_output_stream(f"{BUCKET}/corpus/corpus.txt") as f:
            f.write("".join(base[i % len(base)] + "\n" for i in range(args.rows)).encode("utf-8"))
        results = []
        for run in range(args.repeat):
            for nodes in (1, 3):
                out = f"s3://{BUCKET}/labels-{nodes}-{run}"
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        str(nodes),
                        str(work / "model"),
                        f"s3://{BUCKET}/corpus",
                        out,
                        str(work),
                    ],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    raise SystemExit(f"{nodes} node(s) failed:\n{proc.stderr[-3000:]}")
                results.append({"run": run, **json.loads(proc.stdout.strip().splitlines()[-1])})
                print(results[-1], flush=True)
        driver = driver_costs(work)
    finally:
        moto.terminate()
    print(
        f"\n{'nodes':>5} {'rows/s (median)':>16} {'labeling rows/s':>16} {'plan s':>7} {'first commit s':>15} "
        f"{'store bytes/row':>16}"
    )
    summary = []
    for nodes in (1, 3):
        rs = [r for r in results if r["nodes"] == nodes]
        row = {
            "nodes": nodes,
            "rows_per_second": statistics.median(r["rows_per_second"] for r in rs),
            "labeling_rows_per_second": statistics.median(r["labeling_rows_per_second"] for r in rs),
            "plan_seconds": statistics.median(r["plan_seconds"] for r in rs),
            "first_commit_seconds": statistics.median(r["first_commit_seconds"] for r in rs),
            "object_store_bytes_per_row": rs[0]["object_store_bytes_per_row"],
        }
        summary.append(row)
        print(
            f"{nodes:>5} {row['rows_per_second']:>16.1f} {row['labeling_rows_per_second']:>16.1f} "
            f"{row['plan_seconds']:>7.2f} {row['first_commit_seconds']:>15.1f} "
            f"{row['object_store_bytes_per_row']:>16.1f}"
        )
    print(
        f"driver alone: planning {driver['plan_ms_per_file']} ms per input file ({driver['files']} objects), "
        f"committing {driver['commit_ms_per_unit']} ms per unit ({driver['units_committed']} records), on the "
        f"S3 server on 127.0.0.1"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(
        json.dumps(
            {
                "machine": machine_record(),
                "command": " ".join(sys.argv),
                "rows": args.rows,
                "summary": summary,
                "driver": driver,
                "runs": results,
            },
            indent=2,
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
