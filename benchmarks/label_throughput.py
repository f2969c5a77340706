"""Labeling throughput, side by side in one run on the same corpus and machine:

(a) ``one_at_a_time``: the reference's way, one ``model.predict`` per sentence (timed on a sample);
(b) ``hf_pipeline``: HF transformers ``pipeline("token-classification")`` with an
    ``AlbertForTokenClassification`` of the same shape, run by ``--hf-python`` (a Python with torch
    and transformers; they are not project dependencies);
(c) ``labeler_float32`` / ``labeler_bfloat16``: this project's in-process ``Labeler``;
(d) ``job_float32`` / ``job_bfloat16``: ``albert-ray label`` end to end, wall clock from before
    Ray starts to the manifest (Ray start, actor start and model load included).

The corpus repeats real sentences of CLUENER / People's Daily (``../shared/corpora``), or the
bundled sample; ALBERT-tiny shape, max length 128, random weights (speed only).  Each
measurement runs in its own process; ``peak_pss_mib`` is the peak over time of the proportional
set size summed over that process and all its descendants (for the job: the driver, Ray's
daemons and every Ray worker).  Corpora over 20k rows run the job modes only.
Prints a table, writes benchmarks/results/label_throughput.json.

usage: python benchmarks/label_throughput.py [--rows 20000] [--rows 1000000 ...] [--hf-python PY]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from albert_ray.runtime.hardware import machine_record  # noqa: E402

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def sentences(corpora: Path) -> list[str]:
    from albert_ray.io.training_files import read_examples

    files = [corpora / "cluener" / "cluener.test", corpora / "peoples_daily" / "example.test"]
    files = [f for f in files if f.is_file()] or [ROOT / "data" / "ner_sample.test.bio"]
    out = []
    for f in files:
        out += [e.text for e in read_examples(f, on_bad_records="skip").examples]
    return out


def make_model(corpora: Path, path: Path) -> None:
    from albert_ray import modeldir
    from albert_ray.model.encoder_config import EncoderConfig
    from albert_ray.model.tokenization import Vocab, build_char_vocab
    from albert_ray.spec import ModelSpec

    cfg_file = corpora / "albert_zh" / "albert_config_tiny.json"
    if cfg_file.is_file():
        enc, vocab = (
            EncoderConfig.from_json_file(cfg_file),
            Vocab.from_file(corpora / "albert_zh" / "vocab.txt"),
        )
    else:
        vocab = build_char_vocab(sentences(corpora))
        enc = EncoderConfig.from_dict(
            {**json.loads((ROOT / "data/albert_config_sample.json").read_text()), "vocab_size": len(vocab)}
        )
    spec = ModelSpec(
        task="ner", labels=("LOC", "ORG", "PER"), encoder=enc, max_len=128, dropout=0.0, name="bench_ner"
    )
    modeldir.create(path, spec, vocab)


class PssSampler(threading.Thread):
    """Peak of the proportional set size summed over this process and its descendants."""

    def __init__(self, every: float = 0.5):
        super().__init__(daemon=True)
        self.every, self.peak, self.stop = every, 0, threading.Event()

    @staticmethod
    def tree_pss(root: int) -> int:
        parents = {}
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
        tree, frontier = {root}, [root]
        while frontier:
            kids = [p for p, pp in parents.items() if pp in frontier and p not in tree]
            tree.update(kids)
            frontier = kids
        total = 0
        for pid in tree:
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
            except (OSError, StopIteration):
                pass
        return total

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.tree_pss(os.getpid()))
            self.stop.wait(self.every)


def child(mode: str, model_dir: str, corpus: str, limit: int) -> dict:
    """One measurement; runs in a fresh process."""
    import numpy as np

    sampler = PssSampler()
    sampler.start()
    if mode.startswith("job_"):  # the job streams the file: do not hold it here either (it would count)
        with open(corpus, "rb") as f:
            texts = range(sum(1 for _ in f))
    else:
        texts = Path(corpus).read_text(encoding="utf-8").splitlines()
    if limit:
        texts = texts[:limit]
    began, extra = time.time(), {}
    if mode == "one_at_a_time":  # the reference: model.predict per sentence
        from albert_ray.inference.labeler import Labeler
        from albert_ray.io.batching import pad_batch

        lab = Labeler.from_dir(model_dir)
        windows = [lab.task.windows(lab.tokenizer, t, lab.spec) for t in texts]
        began = time.time()
        outputs = []
        for ws in windows:
            ids = pad_batch([w.token_ids for w in ws])
            outputs += [
                o[: len(w.token_ids)]
                for o, w in zip(lab.model.predict([ids, np.zeros_like(ids)], verbose=0), ws)
            ]
        lab.task.decode_batch(texts, windows, outputs, lab.spec, lab.model)
    elif mode.startswith("labeler_"):
        from albert_ray.inference.labeler import Labeler

        lab = Labeler.from_dir(model_dir, precision=mode.split("_", 1)[1])
        began = time.time()
        for i in range(0, len(texts), 2048):
            lab.predict(texts[i : i + 2048])
    elif mode.startswith("job_"):
        import shutil

        from albert_ray.label.config import LabelConfig
        from albert_ray.label.run import label_corpus
        from albert_ray.runtime.attach import init_ray

        out = Path(corpus).with_suffix(f".{mode}.labels")
        shutil.rmtree(out, ignore_errors=True)
        init_ray(None, dashboard=False)  # wall clock includes starting Ray
        m = label_corpus(
            LabelConfig(
                model=model_dir,
                inputs=(corpus,),
                output=str(out),
                precision=mode.split("_", 1)[1],
                progress=False,
            )
        )
        assert m["rows_out"] == len(texts), m
        extra = {
            "plan_seconds": m["plan_seconds"],
            "first_commit_seconds": m["first_commit_seconds"],
            "labeling_rows_per_second": m["rows_per_second"],
        }
    elif mode == "hf_pipeline":
        from transformers import AlbertConfig, AlbertForTokenClassification, BertTokenizerFast, pipeline

        spec = json.loads((Path(model_dir) / "model.json").read_text())["encoder"]
        cfg = AlbertConfig(
            vocab_size=spec["vocab_size"],
            embedding_size=spec["embedding_size"],
            hidden_size=spec["hidden_size"],
            num_hidden_layers=spec["num_hidden_layers"],
            num_attention_heads=spec["num_attention_heads"],
            intermediate_size=spec["intermediate_size"],
            max_position_embeddings=512,
            num_labels=7,
        )
        tok = BertTokenizerFast(str(Path(model_dir) / "vocab.txt"), do_lower_case=True)
        pipe = pipeline(
            "token-classification", model=AlbertForTokenClassification(cfg), tokenizer=tok, device=-1
        )
        began = time.time()
        list(pipe(texts, batch_size=32))
    seconds = time.time() - began
    sampler.stop.set()
    sampler.join()
    return {"rows": len(texts), "seconds": seconds, "peak_pss_mib": sampler.peak / 2**20, **extra}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, action="append", help="corpus sizes (default 20000)")
    parser.add_argument("--modes", help="comma-separated subset of the modes")
    parser.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"))
    parser.add_argument("--work", default="/tmp/albert_ray_label_bench")
    parser.add_argument("--one-at-a-time-rows", type=int, default=300)
    parser.add_argument("--hf-rows", type=int, default=3000, help="rows timed for the HF pipeline")
    parser.add_argument(
        "--hf-python",
        default=sys.executable,
        help="a Python with torch and transformers (e.g. a venv with `pip install torch==2.13.0 transformers`)",
    )
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "label_throughput.json"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, model_dir, corpus, limit = args.child
        print(json.dumps(child(mode, model_dir, corpus, int(limit))))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpora = Path(args.corpora)
    model_dir = work / "model"
    if not (model_dir / "model.json").exists():
        make_model(corpora, model_dir)
    base = sentences(corpora)
    results = []
    for n in args.rows or [20000]:
        corpus = work / f"corpus_{n}.txt"
        if not corpus.exists():
            with corpus.open("w", encoding="utf-8") as f:
                for i in range(n):
                    f.write(base[i % len(base)] + "\n")
        modes = [
            ("one_at_a_time", args.one_at_a_time_rows),
            ("hf_pipeline", args.hf_rows),
            ("labeler_float32", 0),
            ("labeler_bfloat16", 0),
            ("job_float32", 0),
            ("job_bfloat16", 0),
        ]
        if n > 20_000:  # only the streaming job is meant for corpora larger than memory
            modes = [m for m in modes if m[0].startswith("job_")]
        if args.modes:
            modes = [m for m in modes if m[0] in args.modes.split(",")]
        for mode, limit in modes:
            python = args.hf_python if mode == "hf_pipeline" else sys.executable
            proc = subprocess.run(
                [python, __file__, "--child", mode, str(model_dir), str(corpus), str(limit)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
                results.append({"corpus_rows": n, "mode": mode, "skipped": reason[:200]})
            else:
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append(
                    {
                        "corpus_rows": n,
                        "mode": mode,
                        **{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()},
                        "rows_per_second": round(r["rows"] / r["seconds"], 1),
                    }
                )
            print(results[-1], flush=True)
    print_table(results)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"machine": machine_record(), "results": results}, indent=2))


def print_table(results: list[dict]) -> None:
    def rate(n, mode):
        r = next(
            (x for x in results if x["corpus_rows"] == n and x["mode"] == mode and "rows_per_second" in x),
            None,
        )
        return r and r["rows_per_second"]

    print(f"\n{'corpus':>8} {'mode':<18} {'rows/s':>8} {'x HF':>6} {'x labeler':>10} {'peak PSS MiB':>13}")
    for r in results:
        if "rows_per_second" not in r:
            print(f"{r['corpus_rows']:>8} {r['mode']:<18} skipped: {r['skipped']}")
            continue
        hf = rate(r["corpus_rows"], "hf_pipeline")
        lab = (
            rate(r["corpus_rows"], "labeler_" + r["mode"].split("_", 1)[1])
            if r["mode"].startswith("job_")
            else None
        )
        x_hf = f"{r['rows_per_second'] / hf:.2f}" if hf else ""
        x_lab = f"{r['rows_per_second'] / lab:.2f}" if lab else ""
        print(
            f"{r['corpus_rows']:>8} {r['mode']:<18} {r['rows_per_second']:>8} {x_hf:>6} {x_lab:>10} "
            f"{round(r['peak_pss_mib']):>13}"
        )


if __name__ == "__main__":
    main()
