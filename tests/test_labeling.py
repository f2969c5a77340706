"""Bulk labeling: settings and output-location checks (fast), and the Ray Data job (slow):
schema per task, hostile inputs, all rows quarantined, kill and resume, changed inputs."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from albert_ray.label.config import LabelConfig
from albert_ray.label.run import actor_layout, label_corpus, plan_run
from albert_ray.label.store import QUARANTINE_DIR, QUARANTINE_SCHEMA, UNITS_DIR, OutputStore, output_schema

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "张伟 昨天在北京会见了新华社代表团。",
    "来自 Shanghai 的李明加入了清华大学（ＡＢＣ）🎓。",
    "据人民日报社报道，王芳已经抵达上海。",
    "“王芳”说：我很喜欢 上海 和 北京！",
]


def test_label_config_validation_and_actor_layout():
    with pytest.raises(ValueError, match="format='xml'"):
        LabelConfig(model="m", inputs=("a",), output="o", format="xml")
    with pytest.raises(ValueError, match=r"batch_size=0: must be >= 1"):
        LabelConfig(model="m", inputs=("a",), output="o", batch_size=0)
    with pytest.raises(
        ValueError, match=r"precision='fp8': must be one of \('auto', 'float32', 'bfloat16', 'float16'\)"
    ):
        LabelConfig(model="m", inputs=("a",), output="o", precision="fp8")
    cfg = LabelConfig(model="m", inputs=("a",), output="o")
    assert actor_layout(cfg, {"CPU": 2.0}) == (2, 1)
    assert actor_layout(cfg, {"CPU": 16.0}) == (4, 4)
    assert actor_layout(
        LabelConfig(model="m", inputs=("a",), output="o", num_gpus=1), {"CPU": 8, "GPU": 2}
    ) == (2, 4)
    assert actor_layout(
        LabelConfig(model="m", inputs=("a",), output="o", concurrency=3, tf_threads=2), {"CPU": 2}
    ) == (
        3,
        2,
    )


def test_label_config_from_yaml_overrides_and_flags(tmp_path):
    from albert_ray.cli import build_parser
    from albert_ray.label.config import load_label_config

    cfg = load_label_config("jobs/configs/label/sample.yaml")
    assert (cfg.model, cfg.inputs, cfg.unit_bytes, cfg.include_text) == (
        "runs/sample_ner/model",
        ("data/generic_sample.jsonl",),
        32 << 20,
        True,
    )
    cfg = load_label_config(
        "jobs/configs/label/sample.yaml",
        ["batch_size=64", "unit_bytes=1MiB"],
        {"batch_size": 128, "output": "elsewhere"},
    )
    assert (cfg.batch_size, cfg.unit_bytes, cfg.output) == (
        128,
        1 << 20,
        "elsewhere",
    )  # flags > overrides > file
    (tmp_path / "bad.yaml").write_text("model: m\ninputs: [a]\noutput: o\nbatch_size: lots\n")
    with pytest.raises(ValueError, match=r"^batch_size='lots': must be int$"):
        load_label_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match=r"^output: required field is missing$"):
        load_label_config(None, ["model=m", "inputs=a"])
    # the command line: one flag per field, unset flags do not override the file
    args = build_parser().parse_args(
        [
            "label",
            "--config",
            "jobs/configs/label/sample.yaml",
            "--input",
            "x.txt",
            "precision=float32",
            "--no-progress",
        ]
    )
    assert (args.inputs, args.progress, args.batch_size) == (["x.txt", "precision=float32"], False, None)


def test_output_inside_an_input_folder_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("你好\n", encoding="utf-8")
    cfg = LabelConfig(
        model=str(tmp_path / "no_model"),
        inputs=(str(tmp_path / "corpus"),),
        output=str(tmp_path / "corpus" / "labels"),
    )
    with pytest.raises(ValueError) as err:
        plan_run(cfg, OutputStore(cfg.output))
    assert str(err.value) == (
        f"output {tmp_path}/corpus/labels lies inside input folder {tmp_path}/corpus: a later "
        f"run would read its own Parquet and quarantine files as input; choose an output folder "
        f"outside the inputs"
    )
    cfg = LabelConfig(
        model="m", inputs=(str(tmp_path / "corpus" / "*.txt"),), output=str(tmp_path / "corpus" / "out")
    )
    with pytest.raises(ValueError, match="lies inside input folder"):
        plan_run(cfg, OutputStore(cfg.output))
    assert not (tmp_path / "corpus" / "labels").exists() and not (tmp_path / "corpus" / "out").exists()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from albert_ray.finetune.config import load_job_config
    from albert_ray.finetune.driver import train_in_process

    out = tmp_path_factory.mktemp("models")
    dirs = {}
    for name in ("sample_ner", "sample_classify", "sample_multilabel"):
        job = load_job_config(
            f"jobs/configs/{name}.yaml",
            [
                f"output_dir={out}",
                "train.epochs=1",
                "model.max_len=64",
                "data.max_train_examples=96",
                "train.log_every=0",
            ],
        )
        dirs[job.task] = train_in_process(job)["model_dir"]
    return dirs


def _frames(out: Path):
    """Whole-folder reads of the output and the quarantine with pandas and pyarrow (both must work)."""
    good, bad = pq.read_table(out), pq.read_table(out / QUARANTINE_DIR)
    assert (
        len(pd.read_parquet(out)) == good.num_rows
        and len(pd.read_parquet(out / QUARANTINE_DIR)) == bad.num_rows
    )
    return good, bad


def _config(model, inputs, out, **kw):
    return LabelConfig(
        model=model, inputs=tuple(str(i) for i in inputs), output=str(out), progress=False, **kw
    )


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("task", ["ner", "classify", "multilabel"])
def test_output_schema_offsets_and_accounting(tmp_path, local_ray, models, task):
    lines = TEXTS + ["", "x" * 300]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = label_corpus(
        _config(
            models[task],
            [tmp_path / "in.txt"],
            tmp_path / "out",
            include_text=True,
            include_probs=task != "ner",
            max_chars=200,
            precision="float32",
        )
    )
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_quarantined"]) == (6, 4, 2)
    assert manifest["quarantine_reasons"] == {"empty text": 1, "text too long": 1}
    assert manifest["precision"] == ["float32"]
    table, bad = _frames(tmp_path / "out")
    from albert_ray.spec import ModelSpec

    spec = ModelSpec.load(Path(models[task]) / "model.json")
    for f in output_schema(spec, include_text=True, include_probs=task != "ner"):
        assert table.schema.field(f.name).type == f.type, f.name
    rows = sorted(table.to_pylist(), key=lambda r: r["line"])
    assert [r["line"] for r in rows] == [1, 2, 3, 4] and all(r["source"].endswith("in.txt") for r in rows)
    assert [r["text"] for r in rows] == TEXTS
    labels = json.loads((tmp_path / "out" / "_manifest.json").read_text())["labels"]
    if task == "ner":
        for r in rows:
            for e in r["entities"]:
                assert TEXTS[r["line"] - 1][e["start"] : e["end"]] == e["text"]
        assert sum(manifest["entity_counts"].values()) == sum(len(r["entities"]) for r in rows)
    elif task == "classify":
        assert all(r["label"] in labels and len(r["probs"]) == len(labels) for r in rows)
        assert all(abs(r["score"] - max(r["probs"])) < 1e-6 for r in rows)
        assert sum(manifest["label_counts"].values()) == 4
    else:
        assert all(len(r["labels"]) == len(r["scores"]) and len(r["probs"]) == len(labels) for r in rows)
    assert bad.schema.remove(bad.schema.get_field_index("unit")) == QUARANTINE_SCHEMA
    assert sorted((r["line"], r["reason"]) for r in bad.to_pylist()) == [
        (5, "empty text"),
        (6, "text too long (300 characters, max_chars=200)"),
    ]


@pytest.mark.slow
@pytest.mark.ci
def test_hostile_inputs_finish_with_every_bad_row_quarantined(tmp_path, local_ray, models):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    good = [TEXTS[i % 4] for i in range(40)]
    (corpus / "a.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(good).encode())  # BOM, CRLF, no final \n
    (corpus / "b.jsonl").write_text(
        "\n".join(
            [json.dumps({"text": t, "id": i}, ensure_ascii=False) for i, t in enumerate(TEXTS)]
            + ['{"text": "abc\\ud83d"}', '{"text": null}', "[1]", "{bad", '{"text": "a\\u0000b"}']
        )
        + "\n",
        encoding="utf-8",
    )
    (corpus / "c.csv").write_bytes(
        b"\xef\xbb\xbf" + 'text,id\n张伟在北京。,1\n"open,2\n王芳在上海。,3\n'.encode()
    )
    whole = gzip.compress("\n".join(good * 50).encode())
    (corpus / "d.txt.gz").write_bytes(whole[: len(whole) // 2])
    (corpus / "e.txt.gz").write_bytes(gzip.compress("\n".join(good).encode()))
    m = label_corpus(_config(models["ner"], [corpus], tmp_path / "out", id_field="id", unit_bytes=200))
    table, bad = _frames(tmp_path / "out")
    assert m["rows_in"] == m["rows_out"] + m["rows_quarantined"] == table.num_rows + bad.num_rows
    by_source = {}
    for r in table.to_pylist():
        by_source.setdefault(Path(r["source"]).name, []).append(r["line"])
    assert sorted(by_source["a.txt"]) == list(range(1, 41))  # the BOM took no row, CRLF no text
    assert sorted(by_source["e.txt.gz"]) == list(range(1, 41))  # the good file beside the damaged one
    assert sorted(by_source["b.jsonl"]) == [1, 2, 3, 4]
    assert sorted(by_source["c.csv"]) == [2, 4]  # the unterminated quote's line read again
    assert len(by_source["d.txt.gz"]) > 100
    reasons = {(Path(r["source"]).name, r["line"]): r["reason"].split(" (")[0] for r in bad.to_pylist()}
    assert {k: v for k, v in reasons.items() if k[0] != "d.txt.gz"} == {
        ("b.jsonl", 5): "lone surrogate",
        ("b.jsonl", 6): "null field 'text'",
        ("b.jsonl", 7): "not a JSON object",
        ("b.jsonl", 8): "not valid JSON",
        ("b.jsonl", 9): "NUL character",
        ("c.csv", 3): "unterminated quote",
    }
    damaged = [r for r in bad.to_pylist() if r["source"].endswith("d.txt.gz")]
    assert len(damaged) == 1 and damaged[0]["line"] == len(by_source["d.txt.gz"]) + 1
    assert "bytes decompressed, the rest is lost" in damaged[0]["reason"]
    ids = {r["line"]: r["id"] for r in table.to_pylist() if r["source"].endswith("b.jsonl")}
    assert ids == {1: "0", 2: "1", 3: "2", 4: "3"}


@pytest.mark.slow
@pytest.mark.ci
def test_all_rows_quarantined_still_leaves_readable_folders(tmp_path, local_ray, models):
    (tmp_path / "in.jsonl").write_text('{"x": 1}\n{"x": 2}\n', encoding="utf-8")
    m = label_corpus(_config(models["classify"], [tmp_path / "in.jsonl"], tmp_path / "out"))
    assert (m["rows_in"], m["rows_out"], m["rows_quarantined"]) == (2, 0, 2)
    table, bad = _frames(tmp_path / "out")
    assert table.num_rows == 0 and {"label", "score", "line", "source"} <= set(table.column_names)
    assert [r["reason"] for r in bad.to_pylist()] == ["missing field 'text'"] * 2


def _records(out: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in (out / UNITS_DIR).glob("*.json")}


@pytest.mark.slow
# not in CI (resume after a kill: the Ctrl-C test in CI resumes the same way)
def test_killed_run_resumes_reusing_committed_units(tmp_path, models):
    """SIGKILL the real CLI (driver and its Ray) after some units are committed, units with
    quarantined rows among them; the re-run reuses exactly those units and ends with one
    version of each row."""
    n = 12000
    lines = [TEXTS[i % 4] + str(i) if i % 97 else "" for i in range(n)]  # a blank (quarantined) line every 97
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    cmd, env, proc = _stop_after_units(models["ner"], tmp_path / "in.txt", out, signal.SIGKILL)
    before = _records(out)
    assert 3 <= len(before) and any(r["rows_quarantined"] for r in before.values())
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads((out / "_manifest.json").read_text())
    assert m["units_reused"] == len(before) and m["units"] > len(before)
    assert all(_records(out)[u]["committed_at"] == r["committed_at"] for u, r in before.items())  # not redone
    table, bad = _frames(out)
    got = sorted(table.column("line").to_pylist() + bad.column("line").to_pylist())
    assert got == list(range(1, n + 1))  # no gap, no duplicate
    assert sorted(bad.column("line").to_pylist()) == [i + 1 for i in range(0, n, 97)]
    assert (m["rows_in"], m["rows_out"], m["rows_quarantined"]) == (
        n,
        n - len(range(0, n, 97)),
        len(range(0, n, 97)),
    )
    page = (out / "_summary.html").read_text(encoding="utf-8")  # the manifest for people
    assert (
        f"<td>rows_in</td><td>{n}</td>" in page
        and f"<td>rows_quarantined</td><td>{len(range(0, n, 97))}</td>" in page
    )
    assert all(f"<td>{reason}</td><td>{k}</td>" in page for reason, k in m["quarantine_reasons"].items())
    text_of = {r["line"]: r for r in table.to_pylist()}
    for e in text_of[2]["entities"]:
        assert lines[1][e["start"] : e["end"]] == e["text"]


@pytest.mark.slow
@pytest.mark.ci
def test_ctrl_c_stops_with_one_line_and_the_next_run_resumes(tmp_path, models):
    """SIGINT to the CLI's process group (what a terminal's Ctrl-C does): exit 130 and one line
    saying what is committed; the same command then finishes the job."""
    n = 30000  # units commit in bursts: enough rows that the signal lands before the last one
    lines = [TEXTS[i % 4] + str(i) for i in range(n)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    cmd, env, proc = _stop_after_units(models["ner"], tmp_path / "in.txt", out, signal.SIGINT)
    err = (tmp_path / "cli.err").read_text()
    assert proc.returncode == 130, err[-2000:]
    said = [line for line in err.splitlines() if line.startswith("albert-ray label:")]
    assert len(said) == 1 and "Traceback" not in err
    committed = len(_records(out))
    planned = int(said[0].split(" units committed")[0].rsplit(" of ", 1)[1])
    assert committed >= 3 and planned > committed
    assert said[0] == (
        f"albert-ray label: interrupted: {committed} of {planned} units committed this run "
        f"({committed} of {planned} in all); run the same command again to resume"
    )
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads((out / "_manifest.json").read_text())
    assert m["units_reused"] == committed and m["rows_out"] == n
    assert sorted(pq.read_table(out).column("line").to_pylist()) == list(range(1, n + 1))


def _start_cli(model, corpus: Path, out: Path):
    """The real CLI in a process group of its own, with its own local Ray (killed with it)."""
    cmd = [
        sys.executable,
        "-m",
        "albert_ray.cli",
        "label",
        "--model",
        model,
        "--input",
        str(corpus),
        "--output",
        str(out),
        "--unit-bytes",
        "4KiB",
        "--batch-size",
        "64",
        "--no-progress",
        "--precision",
        "float32",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(out.parent / "cli.err", "w") as err:  # a file, not a pipe nobody reads while waiting
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
    return cmd, env, proc


def _stop_after_units(model, corpus: Path, out: Path, sig: int, units: int = 3):
    """Start the CLI, send ``sig`` to its process group once ``units`` units are committed, wait
    for it to end (then kill whatever of the group is left)."""
    cmd, env, proc = _start_cli(model, corpus, out)
    try:
        _wait_for_units(proc, out, units)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=120)
    finally:
        _kill_group(proc.pid)
    return cmd, env, proc


def _wait_for_units(proc, out: Path, n: int) -> None:
    deadline = time.time() + 240
    while len(_records(out) if (out / UNITS_DIR).is_dir() else {}) < n and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.2)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
@pytest.mark.ci
def test_changed_inputs_are_relabeled_once_and_gone_inputs_refused(tmp_path, local_ray, models):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    first = [TEXTS[i % 4] + str(i) for i in range(300)]
    (corpus / "a.txt").write_text("\n".join(first) + "\n", encoding="utf-8")
    (corpus / "b.txt").write_text("\n".join(first[:10]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    m1 = label_corpus(_config(models["ner"], [corpus], out, unit_bytes=4096))
    assert m1["rows_out"] == 310
    with (corpus / "a.txt").open("a", encoding="utf-8") as f:  # a file that grows between runs
        f.write("\n".join(TEXTS[i % 4] + "追加" for i in range(10)) + "\n")
    m2 = label_corpus(_config(models["ner"], [corpus], out, unit_bytes=4096))
    table, _ = _frames(out)
    keys = list(zip(table.column("source").to_pylist(), table.column("line").to_pylist()))
    assert len(keys) == len(set(keys)) == 320 == m2["rows_out"]  # exactly one version of each row
    assert m2["units_reused"] == 1  # b.txt; a.txt changed
    assert sorted(line for s, line in keys if s.endswith("a.txt")) == list(range(1, 311))
    assert len(_records(out)) == m2["units"]

    with pytest.raises(ValueError) as err:
        label_corpus(_config(models["ner"], [corpus / "a.txt"], out, unit_bytes=4096))
    assert str(err.value) == (
        f"output {out} holds labels of 1 input file(s) not given now (e.g. {corpus}/b.txt): give "
        f"them again, choose another output, or pass --prune to delete them"
    )
    m3 = label_corpus(_config(models["ner"], [corpus / "a.txt"], out, unit_bytes=4096, prune=True))
    assert m3["rows_out"] == 310 and m3["units_reused"] == m3["units"]
    assert pq.read_table(out).num_rows == 310
