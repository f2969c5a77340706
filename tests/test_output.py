"""What a user sees: the default output holds our lines and none of TensorFlow's, absl's, CUDA's
or Ray's internal chatter; ``-v`` brings them back."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from albert_ray.runtime import quiet

# lines as a local run printed them (Ray's prefix and colours included), each of which must go
NOISE = [
    "\x1b[36m(TrainController pid=7244)\x1b[0m WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",  # noqa: E501 (Ray's line as printed)
    "\x1b[36m(TrainController pid=7244)\x1b[0m I0000 00:00:1795685784.950167    7275 port.cc:153] oneDNN custom operations are on.",  # noqa: E501 (Ray's line as printed)
    "I0000 00:00:1795685784.951111    7275 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",  # noqa: E501 (Ray's line as printed)
    "E0000 00:00:1795685807.374350    7481 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    "E0000 00:00:1795685827.193162    7481 util.cc:131] oneDNN supports DT_BOOL only on platforms with AVX-512.",
    "[2026-11-26 09:36:47,299 E 7244 7275] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' has ...",
    "Requesting resources: {'CPU': 1.0} * 1",
    "Attempting to start training worker group of size 1 with the following resources: [{'CPU': 1.0}] * 1",
    "Started training worker group of size 1: ",
    "- (ip=127.0.0.1, pid=7353) world_rank=0, local_rank=0, node_rank=0",
    "Checkpoint successfully created at: Checkpoint(filesystem=local, path=/tmp/x/checkpoint_2026)",
    "Reporting training result 1: TrainingReport(checkpoint=Checkpoint(filesystem=local, path=/tmp/x), metrics={})",
    "/x/ray/data/_internal/execution/interfaces/execution_options.py:436: RayDeprecationWarning: "
    "`ExecutionOptions.exclude_resources` is deprecated",
    "  self.exclude_resources = exclude_resources",
    "Starting execution of Dataset train_0354DIhco6BrvIHIo6nxAw_0. Full logs are in /tmp/ray/session/logs/ray-data",
    "Execution plan of Dataset train_0: InputDataBuffer[Input] -> TaskPoolMapOperator[MapBatches(_featurize_batch)]",
    "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_progress_bars = True`.",
    "A run snapshot was found in storage folder at: '/tmp/exp/demo/ray/sample_ner'",
    "INFO:tensorflow:Collective all_reduce IndexedSlices: 1 all_reduces, num_devices =1, group_size = 2",
    # a killed training worker: the driver's own warning line says it
    "\x1b[33m(raylet)\x1b[0m A worker died or was killed while executing a task by an unexpected system error. To "
    "troubleshoot the problem, check the logs for the dead worker. Lease ID: 0b00 Worker ID: f71a",
    "Collective all_reduce IndexedSlices: 1 all_reduces, num_devices =1, group_size = 2, implementation = AUTO",
]
OURS = [
    "run sample_ner: task=ner, 700 training rows, 1 workers (ray shards), per-worker batch 32",
    "epoch 1/10: loss 27.3770, dev ner 0.0733 (best 0.0733), 59.4 ex/s per worker",
    "resumed from checkpoint at epoch 11, batch 0 (optimizer step 220, best dev 0.7488)",
    "albert-ray train: error: data.train=x.bio: file not found",
    "E0000 00:00:1795685827.193162    7481 some_op.cc:131] Internal: a real TensorFlow error",
]


def test_noise_lines_are_recognised_and_ours_are_kept(monkeypatch):
    monkeypatch.setenv(quiet.VERBOSE_ENV, "0")
    assert [line for line in NOISE if not quiet.is_noise(line)] == []
    assert [line for line in OURS if quiet.is_noise(line)] == []
    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")  # -v: nothing is noise
    assert [line for line in NOISE if quiet.is_noise(line)] == []


MARKERS = [
    "absl::InitializeLog",
    "oneDNN",
    "cuda",
    "cuInit",
    "TrainingReport(",
    "Checkpoint successfully created",
    "RayDeprecationWarning",
    "Token authentication is enabled",
    "Execution plan of Dataset",
    "core_worker.cc",
    "albert-ray-progress",
    "execution finished in",
    "Tip: Use",
    "Failed to query Ray Train Controller",
]


@pytest.mark.slow
@pytest.mark.ci  # one real local-Ray training run of the demo's job on a pseudo-terminal, output grepped
def test_the_demo_prints_our_lines_and_bars_only_and_v_brings_the_rest_back(tmp_path):
    """The README's main job (fewer epochs) as a user at a terminal sees it: no noise line, our
    epoch lines, the report, the prediction, and the rank-0 worker's step bar drawn by the driver."""
    import re
    import shutil

    if not shutil.which("script"):
        pytest.skip("util-linux 'script' (a pseudo-terminal) is not installed")
    cmd = (
        f"stty cols 120 rows 40; {sys.executable} -m albert_ray.cli train --config jobs/configs/sample_ner.yaml "
        f"output_dir={tmp_path} train.epochs=2 data.max_train_examples=300 --predict 张伟昨天在北京会见了新华社代表团。"
    )
    out = subprocess.run(
        ["script", "-qec", cmd, str(tmp_path / "tty.log")],
        capture_output=True,
        timeout=400,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0
    text = (tmp_path / "tty.log").read_bytes().decode("utf-8", "replace").replace("\r", "\n")
    assert [m for m in MARKERS if m.lower() in text.lower()] == []
    assert (
        "epoch 2/2: loss " in text
        and "micro avg" in text
        and '"text": "张伟昨天在北京会见了新华社代表团。"' in text
    )
    assert re.search(
        r"epoch 2/2 loss \d+\.\d{4}: +100%\|", text
    )  # drawn by the driver from the worker's state
    lines = [line for line in text.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) < 40

    loud_predict_brings_back_what_this_cpu_prints()
    quiet_run = subprocess.run(
        [
            sys.executable,
            "-m",
            "albert_ray.cli",
            "predict",
            "--model",
            "tests/data/model_before_mixed_precision",
            "张伟",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert quiet_run.returncode == 0 and quiet_run.stderr == ""


def loud_predict_brings_back_what_this_cpu_prints(env: dict | None = None) -> None:
    """``-v``: TensorFlow's start-up lines come back. "Could not find cuda drivers" comes on every
    CPU without a GPU; the oneDNN line only where TensorFlow turns oneDNN on (hardware.onednn_on:
    TF_ENABLE_ONEDNN_OPTS, else the CPU's flags), so it is expected exactly there."""
    import os

    from albert_ray.runtime import hardware

    env = {**os.environ, **(env or {})}
    loud = subprocess.run(
        [
            sys.executable,
            "-m",
            "albert_ray.cli",
            "-v",
            "predict",
            "--model",
            "tests/data/model_before_mixed_precision",
            "张伟",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "Could not find cuda drivers" in loud.stderr
    assert ("oneDNN custom operations are on" in loud.stderr) == hardware.onednn_on(env=env)


def test_onednn_expectation_follows_the_cpu_flags_and_the_override():
    from albert_ray.runtime import hardware

    zen3_avx2 = frozenset("fpu sse4_2 avx avx2 fma bmi2 sha_ni vaes vpclmulqdq".split())
    epyc_amx = zen3_avx2 | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"}
    assert hardware.onednn_on(zen3_avx2, env={}) is False
    assert hardware.onednn_on(epyc_amx, env={}) is True
    assert hardware.onednn_on(epyc_amx, env={"TF_ENABLE_ONEDNN_OPTS": "0"}) is False
    assert hardware.onednn_on(zen3_avx2, env={"TF_ENABLE_ONEDNN_OPTS": "1"}) is True
    assert hardware.has_bf16(zen3_avx2) is False and hardware.has_bf16(epyc_amx) is True


@pytest.mark.slow
@pytest.mark.ci  # ~10 s: the CPU-dependent expectation, checked both ways on every CI machine
@pytest.mark.parametrize("onednn", ["0", "1"])
def test_v_holds_with_onednn_forced_either_way(onednn):
    """What an AVX2-only CPU does (oneDNN off: no oneDNN line) and what an AMX CPU does (on),
    forced through TensorFlow's own switch on whatever CPU runs the test."""
    loud_predict_brings_back_what_this_cpu_prints({"TF_ENABLE_ONEDNN_OPTS": onednn})


# ---- plots and report.html ---------------------------------------------------------------------
def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return len(data)


def test_report_page_has_the_curves_per_label_bars_the_task_plots_and_the_text(tmp_path):
    from types import SimpleNamespace

    from albert_ray.inference.evaluate import report_page
    from albert_ray.io.training_files import Example
    from albert_ray.reports import page as pages
    from albert_ray.reports.metrics import classification_reports, ner_reports

    history = [{"epoch": e, "train_loss": 2.0 / e, "dev_score": 0.5 + 0.1 * e} for e in (1, 2, 3)]
    gold, pred = ["体育", "体育", "汽车", "教育"], ["体育", "汽车", "汽车", "教育"]
    examples = [Example(text="x", source="t:1", label=g) for g in gold]
    text, report = classification_reports(gold, pred)
    spec = SimpleNamespace(task="classify", labels=("体育", "教育", "汽车"))
    page = report_page(
        tmp_path / "c", spec, examples, [{"label": p} for p in pred], text, report, history, title="sogou"
    )
    names = sorted(p.name for p in (tmp_path / "c").glob("*.png"))
    assert names == ["confusion.png", "curves.png", "per_label.png"]
    assert all(_png(tmp_path / "c" / n) > 5000 for n in names)
    body = page.read_text(encoding="utf-8")
    assert all(f'src="{n}"' in body for n in names)
    assert "0.6667" in text and "0.6667" in body  # the seqeval/sklearn text report, on the page
    assert "<td>accuracy</td><td>0.7500</td>" in body
    if pages._font_covering("体育教育汽车") is None:  # no CJK font here: numbered ticks, listed on the page
        assert "labels in the plots: 1 = 体育, 2 = 教育, 3 = 汽车" in body

    text, report = ner_reports([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "O"]])
    spec = SimpleNamespace(task="ner", labels=("LOC", "PER"))
    page = report_page(tmp_path / "n", spec, [Example(text="张伟在京", source="t:1")], [{}], text, report)
    names = sorted(p.name for p in (tmp_path / "n").glob("*.png"))
    assert names == ["entity_types.png", "per_label.png"]  # no history: no curves
    assert all(_png(tmp_path / "n" / n) > 5000 for n in names)
    assert "<td>micro avg F1</td><td>0.6667</td>" in page.read_text(encoding="utf-8")


def test_labels_no_installed_font_can_draw_are_numbered_and_listed(tmp_path, monkeypatch):
    from albert_ray.reports import page as pages

    monkeypatch.setattr(
        pages, "_font_covering", lambda text: None if any(ord(c) > 0x2E80 for c in text) else "x"
    )
    assert pages.tick_names(["体育", "汽车"]) == ["1", "2"]
    assert pages.tick_names(["LOC", "PER"]) == ["LOC", "PER"]


def test_label_summary_page_shows_totals_counts_chart_and_reasons():
    from albert_ray.reports.page import label_summary_page

    manifest = {
        "model_name": "sample_ner",
        "task": "ner",
        "rows_in": 10,
        "rows_out": 8,
        "rows_quarantined": 2,
        "rows_per_second": 123.4,
        "entity_counts": {"PER": 5, "LOC": 3},
        "quarantine_reasons": {"empty text": 1, "invalid UTF-8 (byte 0xff at 3)": 1},
    }
    page = label_summary_page(manifest, "entity_counts")
    for cell in (
        "<td>rows_in</td><td>10</td>",
        "<td>rows_out</td><td>8</td>",
        "<td>rows_quarantined</td><td>2</td>",
        "<td>rows_per_second</td><td>123.4</td>",
        "<td>PER</td><td>5</td>",
        "<td>LOC</td><td>3</td>",
        "<td>empty text</td><td>1</td>",
        "<td>invalid UTF-8 (byte 0xff at 3)</td><td>1</td>",
    ):
        assert cell in page
    assert page.count('src="data:image/png;base64,') == 1
    assert "<p>none</p>" in label_summary_page({**manifest, "quarantine_reasons": {}}, "entity_counts")


def test_evaluate_output_writes_the_report_page_for_any_data_set(tmp_path):

    model = Path(__file__).parent / "data" / "model_before_mixed_precision"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "albert_ray.cli",
            "evaluate",
            "--model",
            str(model),
            "--data",
            "data/ner_sample.test.bio",
            "--output",
            str(tmp_path / "eval"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert files == [
        "entity_types.png",
        "metrics.json",
        "per_label.png",
        "report.html",
        "report.txt",
    ]  # no curves
    page = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    report = (tmp_path / "eval" / "report.txt").read_text(encoding="utf-8")
    assert out.stdout.strip() == report.strip()
    micro = next(line for line in report.splitlines() if "micro avg" in line).split()
    assert f"<td>micro avg F1</td><td>{float(micro[4]):.4f}</td>" in page
    assert "100 examples evaluated" in page


def test_the_driver_draws_a_workers_final_state_even_when_its_lines_arrive_together():
    """The log monitor hands a worker's lines over in batches, closer together than tqdm's
    mininterval: the final state (100 %, the last loss) must still be drawn before the bar goes."""
    import io
    import json

    from albert_ray.runtime.progress import PROGRESS_MARK, DriverBars

    stream = io.StringIO()
    bars = DriverBars(stream)
    for n, done in ((0, False), (7, False), (20, True)):
        bars.update(
            PROGRESS_MARK
            + json.dumps({"desc": "epoch 2/2", "n": n, "total": 20, "loss": 1.25 + n, "done": done})
        )
    drawn = stream.getvalue().replace("\r", "\n")
    assert "epoch 2/2 loss 21.2500: 100%|" in drawn
    assert bars.bars == {}


@pytest.mark.slow
@pytest.mark.ci  # the README's main command, whole (a few minutes on 2 cores)
def test_the_demo_script_trains_labels_the_bundled_corpus_into_parquet_and_says_where_to_look(tmp_path):
    """``bash scripts/demo.sh`` as a newcomer runs it: the three demo sentences' entities exactly
    as a person marks them, and entity F1 >= 0.90 on 30 held-out check sentences in frames the
    demo data does not have (tests/data/heldout_ner.jsonl, never used to choose anything); the
    bundled corpus's 232 rows come out as 230 labeled rows in Parquet and the 2 bad ones
    quarantined with their line and reason; the report page and the label summary page exist,
    and the script says where."""
    import os

    import pandas as pd

    env = {**os.environ, "ALBERT_RAY_DEMO_OUTPUT": str(tmp_path)}
    run = subprocess.run(["bash", "scripts/demo.sh"], capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    predicted = [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"text"')]
    assert [[(e["text"], e["label"]) for e in p["entities"]] for p in predicted] == [
        [("张伟", "PER"), ("北京", "LOC"), ("新华社", "ORG")],
        [("人民日报社", "ORG"), ("王芳", "PER"), ("上海", "LOC")],
        [("李明", "PER"), ("清华大学", "ORG")],
    ]  # not "Sha", not the emoji
    from albert_ray.inference.evaluate import evaluate_file

    _, report = evaluate_file(tmp_path / "demo_ner" / "model", "tests/data/heldout_ner.jsonl")
    assert report["micro avg"]["support"] == 53
    # the target is 0.95; the dev-chosen recipe measured 0.938 in this process (0.955 at the
    # rate dev ranked second): the margin below is for run-to-run variation, not the goal
    assert report["micro avg"]["f1-score"] >= 0.90, report["micro avg"]
    rows, bad = (
        pd.read_parquet(tmp_path / "demo_labels"),
        pd.read_parquet(tmp_path / "demo_labels" / "_quarantine"),
    )
    assert len(rows) == 230 and len(set(zip(rows["source"], rows["line"]))) == 230
    assert sorted(zip(bad["line"], bad["reason"].str.split(" \\(").str[0])) == [
        (11, "field 'text' is not a string"),
        (22, "not valid JSON"),
    ]
    assert (tmp_path / "demo_ner" / "model" / "report.html").is_file()
    assert (tmp_path / "demo_labels" / "_summary.html").is_file()
    summary = run.stdout.split("\ndemo summary\n", 1)[1].splitlines()
    assert summary[0].startswith(f"  model        {tmp_path}/demo_ner/model: test entity micro-F1 0.9")
    assert summary[1].startswith(
        f"  labels       230 rows labeled into {tmp_path}/demo_labels (Parquet), 2 quarantined, "
    )
    assert [line.split(": ")[0] for line in summary[2:4]] == [  # from the working directory
        "  quarantined  data/demo_corpus/more.jsonl line 11",
        "  quarantined  data/demo_corpus/more.jsonl line 22",
    ]
    assert summary[4].startswith("  most found   ") and summary[4].count("/") == 8
    assert (
        summary[5]
        == f"  pages        {tmp_path}/demo_ner/model/report.html, {tmp_path}/demo_labels/_summary.html"
    )
