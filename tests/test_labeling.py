"""Bulk labeling: reading and quarantine rules (fast), and the Ray Data job (slow)."""

import gzip
import json
import shutil

import pyarrow.parquet as pq
import pytest

from albert_ray.labeling import (QUARANTINE_DIR, LabelConfig, expand_inputs, label_corpus, output_schema,
                                 plan_units, read_unit)

TEXTS = ["张伟 昨天在北京会见了新华社代表团。", "来自 Shanghai 的李明加入了清华大学（ＡＢＣ）🎓。",
         "据人民日报社报道，王芳已经抵达上海。", "“王芳”说：我很喜欢 上海 和 北京！"]


def test_units_and_reading_with_line_numbers_gzip_and_quarantine(tmp_path):
    raw = "好文本\n\n".encode() + b"\xff\xfe bad\n" + ("长" * 50 + "\n").encode() + "最后一行".encode()
    with gzip.open(tmp_path / "a.txt.gz", "wb") as f:
        f.write(raw)
    (tmp_path / "b.jsonl").write_text('{"text": "一", "id": 5}\n{"txt": "x"}\n[1]\n{bad\n', encoding="utf-8")
    (tmp_path / "c.csv").write_text("id,content\n1,你好\n2,\n", encoding="utf-8")
    files = expand_inputs([str(tmp_path)])
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.txt.gz", "b.jsonl", "c.csv"]
    units = plan_units(files, "auto", unit_lines=3)
    assert [(u.fmt, u.start, u.stop, u.rows) for u in units] == [
        ("text", 0, 3, 3), ("text", 3, 5, 2), ("jsonl", 0, 3, 3), ("jsonl", 3, 4, 1), ("csv", 0, 2, 2)]
    rows = [r for u in units[:2] for r in read_unit(u.__dict__, "text", None, max_chars=40)]
    assert [(r["line"], r["reason"]) for r in rows] == [
        (1, None), (2, "empty text"), (3, "not valid UTF-8 (byte 0)"),
        (4, "text of 50 characters exceeds max_chars=40"), (5, None)]
    assert rows[4]["text"] == "最后一行" and rows[2]["raw"].endswith(" bad")
    rows = [r for u in units[2:4] for r in read_unit(u.__dict__, "text", "id", max_chars=40)]
    assert [(r["line"], r["id"], r["reason"]) for r in rows] == [
        (1, "5", None), (2, None, "missing field 'text'"), (3, None, "not a JSON object"),
        (4, None, "not valid JSON (Expecting property name enclosed in double quotes)")]
    rows = read_unit(units[4].__dict__, "content", "id", max_chars=40)
    assert [(r["line"], r["id"], r["text"], r["reason"]) for r in rows] == [(1, "1", "你好", None), (2, "2", None, "empty text")]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.nothing")])


def test_label_config_validation():
    with pytest.raises(ValueError, match="format='xml'"):
        LabelConfig(model="m", inputs=("a",), output="o", format="xml")
    with pytest.raises(ValueError, match="batch_size=0: must be >= 1"):
        LabelConfig(model="m", inputs=("a",), output="o", batch_size=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from albert_ray.jobconfig import load_job_config
    from albert_ray.training import train_in_process

    out = tmp_path_factory.mktemp("models")
    dirs = {}
    for name in ("sample_ner", "sample_classify", "sample_multilabel"):
        job = load_job_config(f"jobs/configs/{name}.yaml", [f"output_dir={out}", "train.epochs=1", "model.max_len=64",
                                                            "data.max_train_examples=96", "train.log_every=0"])
        dirs[job.task] = train_in_process(job)["model_dir"]
    return dirs


def _read(path):
    return pq.read_table(path).to_pylist()


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("task", ["ner", "classify", "multilabel"])
def test_output_schema_offsets_and_accounting(tmp_path, local_ray, models, task):
    lines = TEXTS + ["", "x" * 300]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = LabelConfig(model=models[task], inputs=(str(tmp_path / "in.txt"),), output=str(tmp_path / "out"),
                      include_text=True, include_probs=task != "ner", max_chars=200, batch_size=4)
    manifest = label_corpus(cfg)
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_quarantined"]) == (6, 4, 2)
    assert manifest["quarantine_reasons"] == {"empty text": 1, "text of 300 characters exceeds max_chars=200": 1}
    table = pq.read_table(tmp_path / "out")
    expected = output_schema(task, include_text=True, include_probs=task != "ner")
    for f in expected:
        if f.name != "unit":  # the partition directory, read back as a dictionary column
            assert table.schema.field(f.name).type == f.type, f.name
    rows = sorted(table.to_pylist(), key=lambda r: r["line"])
    assert [r["line"] for r in rows] == [1, 2, 3, 4] and all(r["source"].endswith("in.txt") for r in rows)
    assert [r["text"] for r in rows] == TEXTS
    if task == "ner":
        for r in rows:
            for e in r["entities"]:
                assert TEXTS[r["line"] - 1][e["start"]:e["end"]] == e["text"]
    elif task == "classify":
        labels = json.loads((tmp_path / "out" / "_manifest.json").read_text())["labels"]
        assert all(r["label"] in labels and len(r["probs"]) == len(labels) for r in rows)
    else:
        assert all(len(r["labels"]) == len(r["scores"]) for r in rows)
    bad = sorted(_read(tmp_path / "out" / QUARANTINE_DIR), key=lambda r: r["line"])
    assert [(r["line"], r["reason"]) for r in bad] == [(5, "empty text"), (6, "text of 300 characters exceeds max_chars=200")]


@pytest.mark.slow
@pytest.mark.ci
def test_interrupted_run_resumes_to_the_same_rows(tmp_path, local_ray, models):
    lines = [TEXTS[i % 4] + str(i) for i in range(12)] + [""]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def run(out):
        return label_corpus(LabelConfig(model=models["ner"], inputs=(str(tmp_path / "in.txt"),), output=str(out),
                                        unit_lines=4, batch_size=4))

    def rows(out):
        return sorted((r["line"], json.dumps(r["entities"], sort_keys=True)) for r in _read(out))

    full = run(tmp_path / "full")
    assert full["units"] == 4 and full["rows_in"] == 13
    # what an interruption leaves behind: one unit never written, one with a half-written file,
    # one whose quarantine part is missing
    out = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", out)
    units = sorted(p.name for p in out.iterdir() if p.name.startswith("unit="))
    shutil.rmtree(out / units[0])
    victim = next((out / units[1]).glob("*.parquet"))
    victim.write_bytes(victim.read_bytes()[:40])
    shutil.rmtree(out / QUARANTINE_DIR)
    resumed = run(out)
    assert resumed["units_resumed_complete"] == 1  # only the untouched unit without a blank line
    assert rows(out) == rows(tmp_path / "full")
    assert (resumed["rows_out"], resumed["rows_quarantined"]) == (12, 1)
    assert len({r[0] for r in rows(out)}) == 12  # no duplicates
