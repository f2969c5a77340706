"""Evaluate a model directory on labelled data with the reference's reports."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from albert_ray.inference.labeler import Labeler
from albert_ray.io.training_files import Example, read_examples
from albert_ray.modeldir import METRICS_FILE, REPORT_FILE
from albert_ray.reports.page import write_report_page
from albert_ray.tasks.registry import task_for

log = logging.getLogger(__name__)


def evaluate_examples(
    model_dir: str | Path,
    examples: Sequence[Example],
    labeler: Labeler | None = None,
    page: str | Path | None = None,
    history: Sequence[dict] | None = None,
) -> tuple[str, dict]:
    """Report text and metrics dict of a model on examples; with ``page``, also the plots and
    ``report.html`` in that folder (``history``: the training curves)."""
    labeler = labeler or Labeler.from_dir(model_dir)
    if not examples:
        raise ValueError("no examples to evaluate on")
    predictions = labeler.predict([e.text for e in examples], progress="evaluating")
    text, report = task_for(labeler.spec).report(examples, predictions, labeler.spec)
    if page is not None:
        report_page(
            page,
            labeler.spec,
            examples,
            predictions,
            text,
            report,
            history,
            title=f"{labeler.spec.name}: {labeler.spec.task}",
        )
    return text, report


def report_page(
    folder: str | Path,
    spec,
    examples: Sequence[Example],
    predictions: Sequence[dict],
    text: str,
    report: dict,
    history: Sequence[dict] | None = None,
    title: str = "",
) -> Path:
    """``report.html`` in ``folder`` with the task's own plots (the task draws those; the page
    module draws the rest and does not know the tasks)."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots = task_for(spec).plots(folder, examples, predictions, report, spec)
    return write_report_page(folder, spec.task, len(examples), text, report, plots, history, title)


def evaluate_file(
    model_dir: str | Path,
    data: str | Path,
    fmt: str = "auto",
    on_bad_records: str = "error",
    output: str | Path | None = None,
) -> tuple[str, dict]:
    """Read ``data`` in the model's task format, evaluate, and optionally write ``report.txt``,
    ``metrics.json``, the plots and ``report.html`` into ``output``."""
    labeler = Labeler.from_dir(model_dir)
    spec = labeler.spec
    res = read_examples(
        data, fmt=fmt, on_bad_records=on_bad_records, **task_for(spec).read_options(spec.scheme)
    )
    text, report = evaluate_examples(model_dir, res.examples, labeler, page=output)
    report["skipped_records"] = len(res.skipped)
    if output:
        out = Path(output)
        (out / REPORT_FILE).write_text(text, encoding="utf-8")
        (out / METRICS_FILE).write_text(json.dumps(report, ensure_ascii=False, indent=2))
    return text, report
