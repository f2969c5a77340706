"""Labeling throughput: rows/s and peak RSS of
(a) the reference's way, one ``model.predict`` per sentence (timed on a sample of rows),
(b) batched ``model.predict`` padded to 128 in one process,
(c) this project's ``Labeler`` in one process (tf.function, length-sorted batches, batched CRF decoding),
(d) the Ray Data job (``albert-ray label``),
(e) HF transformers ``pipeline("token-classification")`` with an ``AlbertForTokenClassification`` of
    the same shape, when torch and transformers are installed (they are not project dependencies).

The corpus repeats real sentences from CLUENER / People's Daily (``../shared/corpora``), or the
bundled sample. Same ALBERT-tiny shape, max length 128, batch 32; random weights (speed only).
Each measurement runs in its own process so peak RSS is its own. Prints a table, writes
benchmarks/results/label_throughput.json.
usage: python benchmarks/label_throughput.py [--rows 10000] [--rows 1000000 ...]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def sentences(corpora: Path) -> list[str]:
    from albert_ray.data import read_examples

    files = [corpora / "cluener" / "cluener.test", corpora / "peoples_daily" / "example.test"]
    files = [f for f in files if f.is_file()] or [ROOT / "data" / "ner_sample.test.bio"]
    out = []
    for f in files:
        out += [e.text for e in read_examples(f, on_bad_records="skip").examples]
    return out


def make_model(corpora: Path, path: Path) -> None:
    from albert_ray.config import EncoderConfig
    from albert_ray.encoder import initialize_encoder
    from albert_ray.predict import save_model_dir
    from albert_ray.spec import ModelSpec
    from albert_ray.tasks import build_task_model
    from albert_ray.tokenization import Vocab
    from albert_ray.training import build_char_vocab

    cfg_file = corpora / "albert_zh" / "albert_config_tiny.json"
    if cfg_file.is_file():
        enc, vocab = EncoderConfig.from_json_file(cfg_file), Vocab.from_file(corpora / "albert_zh" / "vocab.txt")
    else:
        vocab = build_char_vocab(sentences(corpora))
        enc = EncoderConfig.from_dict({**json.loads((ROOT / "data/albert_config_sample.json").read_text()),
                                       "vocab_size": len(vocab)})
    labels = ("LOC", "ORG", "PER")
    spec = ModelSpec(task="ner", labels=labels, encoder={**enc.to_dict(), "layout": enc.layout}, max_len=128,
                     dropout=0.0, name="bench_ner")
    model = build_task_model(spec)
    initialize_encoder(model, enc)
    save_model_dir(path, model, spec, vocab)


def child(mode: str, model_dir: str, corpus: str, limit: int) -> dict:
    """One measurement; runs in a fresh process."""
    import numpy as np

    texts = Path(corpus).read_text(encoding="utf-8").splitlines()
    if limit:
        texts = texts[:limit]
    began = time.time()
    if mode in ("one_at_a_time", "batched_predict"):
        from albert_ray.predict import Labeler, pad_batch

        lab = Labeler.from_dir(model_dir)
        windows = [lab.task.windows(lab.tokenizer, t, lab.spec) for t in texts]
        began = time.time()
        if mode == "one_at_a_time":  # the reference: model.predict per sentence
            outputs = []
            for ws in windows:
                ids = pad_batch([w.token_ids for w in ws])
                outputs += list(lab.model.predict([ids, np.zeros_like(ids)], verbose=0))
        else:
            ids = np.zeros((sum(len(w) for w in windows), 128), np.int32)
            flat = [w.token_ids for ws in windows for w in ws]
            for i, r in enumerate(flat):
                ids[i, : len(r)] = r
            outputs = list(lab.model.predict([ids, np.zeros_like(ids)], batch_size=32, verbose=0))
        trimmed = [o[: len(w)] for o, w in zip(outputs, [w.token_ids for ws in windows for w in ws])]
        lab.task.decode_batch(texts, windows, trimmed, lab.spec, lab.model)
    elif mode == "labeler":
        from albert_ray.predict import Labeler

        lab = Labeler.from_dir(model_dir)
        began = time.time()
        for i in range(0, len(texts), 512):
            lab.predict(texts[i : i + 512])
    elif mode == "ray_data":
        import shutil

        from albert_ray.labeling import LabelConfig, label_corpus
        from albert_ray.runtime import init_ray

        out = Path(corpus).with_suffix(".labels")
        shutil.rmtree(out, ignore_errors=True)
        init_ray(None)
        began = time.time()
        m = label_corpus(LabelConfig(model=model_dir, inputs=(corpus,), output=str(out), batch_size=512))
        assert m["rows_out"] == len(texts), m
    elif mode == "hf_pipeline":
        from transformers import AlbertConfig, AlbertForTokenClassification, BertTokenizerFast, pipeline

        spec = json.loads((Path(model_dir) / "model.json").read_text())["encoder"]
        cfg = AlbertConfig(vocab_size=spec["vocab_size"], embedding_size=spec["embedding_size"],
                           hidden_size=spec["hidden_size"], num_hidden_layers=spec["num_hidden_layers"],
                           num_attention_heads=spec["num_attention_heads"], intermediate_size=spec["intermediate_size"],
                           max_position_embeddings=512, num_labels=7)
        tok = BertTokenizerFast(str(Path(model_dir) / "vocab.txt"), do_lower_case=True)
        pipe = pipeline("token-classification", model=AlbertForTokenClassification(cfg), tokenizer=tok, device=-1)
        began = time.time()
        list(pipe(texts, batch_size=32))
    seconds = time.time() - began
    return {"rows": len(texts), "seconds": seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, action="append", help="corpus sizes (default 10000)")
    parser.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"))
    parser.add_argument("--work", default="/tmp/albert_ray_label_bench")
    parser.add_argument("--one-at-a-time-rows", type=int, default=300)
    parser.add_argument("--hf-rows", type=int, default=3000, help="rows timed for the HF pipeline")
    parser.add_argument("--hf-python", default=sys.executable,
                        help="a Python with torch and transformers (e.g. a venv with `pip install torch==2.13.0 transformers`)")
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
    for n in args.rows or [10000]:
        corpus = work / f"corpus_{n}.txt"
        if not corpus.exists():
            with corpus.open("w", encoding="utf-8") as f:
                for i in range(n):
                    f.write(base[i % len(base)] + "\n")
        modes = [("one_at_a_time", args.one_at_a_time_rows), ("batched_predict", 0), ("labeler", 0),
                 ("ray_data", 0), ("hf_pipeline", args.hf_rows)]
        if n > 20_000:  # only the streaming job is meant for corpora larger than memory
            modes = [("ray_data", 0)]
        for mode, limit in modes:
            python = args.hf_python if mode == "hf_pipeline" else sys.executable
            proc = subprocess.run([python, __file__, "--child", mode, str(model_dir), str(corpus), str(limit)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
                results.append({"corpus_rows": n, "mode": mode, "skipped": reason[:200]})
            else:
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append({"corpus_rows": n, "mode": mode, "rows": r["rows"],
                                "rows_per_second": round(r["rows"] / r["seconds"], 1),
                                "peak_rss_mib": round(r["peak_rss_mib"])})
            print(results[-1], flush=True)
    ref = {r["corpus_rows"]: r for r in results if r["mode"] == "one_at_a_time" and "rows_per_second" in r}
    hf = {r["corpus_rows"]: r for r in results if r["mode"] == "hf_pipeline" and "rows_per_second" in r}
    print(f"\n{'corpus':>8} {'mode':<16} {'rows/s':>9} {'peak RSS MiB':>13} {'x one-at-a-time':>16} {'x HF':>6}")
    for r in results:
        if "rows_per_second" not in r:
            print(f"{r['corpus_rows']:>8} {r['mode']:<16} skipped: {r['skipped']}")
            continue
        x1 = r["rows_per_second"] / ref[r["corpus_rows"]]["rows_per_second"] if r["corpus_rows"] in ref else None
        x2 = r["rows_per_second"] / hf[r["corpus_rows"]]["rows_per_second"] if r["corpus_rows"] in hf else None
        print(f"{r['corpus_rows']:>8} {r['mode']:<16} {r['rows_per_second']:>9} {r['peak_rss_mib']:>13} "
              f"{'' if x1 is None else f'{x1:.1f}':>16} {'' if x2 is None else f'{x2:.1f}':>6}")
    res = ROOT / "benchmarks" / "results"
    res.mkdir(exist_ok=True)
    (res / "label_throughput.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
