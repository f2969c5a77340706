"""Plots and one ``report.html`` per evaluation: training curves, per-label precision / recall /
F1, and what a task adds (a confusion matrix for classification, entity counts and F1 per type
for NER), beside the seed-style text report. matplotlib with the Agg backend (no display)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

REPORT_HTML = "report.html"
CURVES_PNG = "curves.png"
PER_LABEL_PNG = "per_label.png"
AVERAGES = ("micro avg", "macro avg", "weighted avg", "samples avg")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_FONTS: dict[frozenset, str | None] = {}


def _font_covering(text: str) -> str | None:
    """An installed font family with a glyph for every character of ``text`` (None: none has)."""
    chars = frozenset(ord(c) for c in text)
    if chars not in _FONTS:
        from matplotlib import font_manager
        from matplotlib.ft2font import FT2Font

        _FONTS[chars] = None
        default = font_manager.findfont(font_manager.FontProperties())
        fonts = sorted(
            font_manager.fontManager.ttflist, key=lambda f: f.fname != default
        )  # the default first
        for font in fonts:
            try:
                if chars <= FT2Font(font.fname).get_charmap().keys():
                    _FONTS[chars] = font.name
                    break
            except (OSError, RuntimeError):
                continue
    return _FONTS[chars]


def tick_names(names: Sequence[str]) -> list[str]:
    """The names as axis labels, or their numbers 1..n when no installed font can draw them
    (Chinese labels on a machine without a CJK font); ``report.html`` then lists the numbers."""
    font = _font_covering("".join(names))
    if font is None:
        return [str(i + 1) for i in range(len(names))]
    import matplotlib

    matplotlib.rcParams["font.family"] = [font, "DejaVu Sans"]
    return list(names)


def label_rows(report: dict) -> dict[str, dict]:
    """The report's per-label rows (sklearn / seqeval ``output_dict``), without averages."""
    return {k: v for k, v in report.items() if isinstance(v, dict) and k not in AVERAGES and "f1-score" in v}


def curves_plot(folder: Path, history: Sequence[dict]) -> Path | None:
    """Training loss and dev score per epoch (epochs with both)."""
    rows = [h for h in history if "train_loss" in h and "dev_score" in h]
    if not rows:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = [h["epoch"] for h in rows]
    left.plot(epochs, [h["train_loss"] for h in rows], marker="o")
    left.set(title="training loss", xlabel="epoch")
    right.plot(epochs, [h["dev_score"] for h in rows], marker="o", color="tab:green")
    right.set(title="dev score", xlabel="epoch")
    return _save(fig, folder / CURVES_PNG)


def per_label_plot(folder: Path, report: dict) -> Path | None:
    """Precision, recall and F1 bars per label."""
    rows = label_rows(report)
    if not rows:
        return None

    plt = _pyplot()
    names = list(rows)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) + 2), 3.6))
    for i, metric in enumerate(("precision", "recall", "f1-score")):
        ax.bar(x + (i - 1) * 0.27, [rows[n][metric] for n in names], 0.27, label=metric)
    ax.set_xticks(
        x, tick_names(names), rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center"
    )
    ax.set(ylim=(0, 1.05), title="per label")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, folder / PER_LABEL_PNG)


def confusion_plot(folder: Path, gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> Path:
    """Confusion matrix, rows gold and columns predicted, with the counts written in."""
    from sklearn.metrics import confusion_matrix

    plt = _pyplot()
    matrix = confusion_matrix(gold, pred, labels=list(labels))
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(labels) + 2.5),) * 2)
    ax.imshow(matrix, cmap="Blues")
    ticks = tick_names(labels)
    ax.set_xticks(range(len(labels)), ticks, rotation=45 if len(labels) > 6 else 0)
    ax.set_yticks(range(len(labels)), ticks)
    ax.set(xlabel="predicted", ylabel="gold", title="confusion matrix")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                int(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
                fontsize="small",
            )
    return _save(fig, folder / "confusion.png")


def entity_types_plot(folder: Path, report: dict) -> Path | None:
    """Gold entities per type (bars) and F1 per type (line)."""
    rows = label_rows(report)
    if not rows:
        return None
    plt = _pyplot()
    names = list(rows)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) + 2), 3.6))
    ticks = tick_names(names)
    ax.bar(ticks, [rows[n]["support"] for n in names], color="tab:gray")
    ax.set(ylabel="gold entities", title="entities per type")
    f1 = ax.twinx()
    f1.plot(ticks, [rows[n]["f1-score"] for n in names], marker="o", color="tab:red")
    f1.set(ylim=(0, 1.05), ylabel="F1")
    ax.tick_params(axis="x", rotation=45 if len(names) > 6 else 0)
    return _save(fig, folder / "entity_types.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def write_report_page(
    folder: str | Path,
    task: str,
    examples: int,
    text: str,
    report: dict,
    task_plots: Sequence[Path | None] = (),
    history: Sequence[dict] | None = None,
    title: str = "",
) -> Path:
    """The curves and per-label plots and ``report.html`` (text report, headline metrics, those
    plots and the task's own, already drawn into ``folder``, which exists) in ``folder``."""
    folder = Path(folder)
    plots = [curves_plot(folder, history or []), per_label_plot(folder, report), *task_plots]
    headline = {k: v for k, v in report.items() if not isinstance(v, dict)}
    for avg in AVERAGES:
        if avg in report:
            headline[f"{avg} F1"] = report[avg]["f1-score"]
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
        if isinstance(v, float)
        else f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in headline.items()
    )
    names = list(label_rows(report))
    legend = (
        ""
        if tick_names(names) == names
        else "<p>labels in the plots: "
        + ", ".join(f"{i + 1} = {html.escape(n)}" for i, n in enumerate(names))
        + "</p>"
    )
    images = legend + "".join(f'<p><img src="{p.name}" alt="{p.stem}"></p>' for p in plots if p is not None)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title or task)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f6f6f6;padding:1em}"
        "td{padding:0 1em}</style></head><body>"
        f"<h1>{html.escape(title or task)}</h1><p>task {html.escape(task)}, "
        f"{examples} examples evaluated</p><table>{rows}</table>"
        f"<h2>report</h2><pre>{html.escape(text)}</pre><h2>plots</h2>{images}</body></html>"
    )
    out = folder / REPORT_HTML
    out.write_text(page, encoding="utf-8")
    return out


def _inline_png(fig) -> str:
    """A figure as a ``data:`` URI, so the page is one self-contained file (also on object stores)."""

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    _pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def label_summary_page(manifest: dict, counts_key: str, top: int = 30) -> str:
    """``_summary.html`` of a label run: rows in / out / quarantined, throughput, the label (or
    entity) counts as a chart and a table, and the quarantine reasons."""
    counts = manifest.get(counts_key, {})
    shown = list(counts.items())[:top]
    chart = ""
    if shown:
        plt = _pyplot()
        names = [k for k, _ in shown]
        ticks = tick_names(names)
        fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(shown) + 2), 3.4))
        ax.bar(ticks, [v for _, v in shown], color="tab:blue")
        ax.set(title=counts_key.replace("_", " "))
        ax.tick_params(axis="x", rotation=45 if len(shown) > 6 else 0)
        chart = f'<p><img src="{_inline_png(fig)}" alt="{counts_key}"></p>'
        if ticks != names:
            chart += "<p>" + ", ".join(f"{t} = {html.escape(n)}" for t, n in zip(ticks, names)) + "</p>"

    def table(rows) -> str:
        return (
            "<table>"
            + "".join(
                f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows
            )
            + "</table>"
        )

    totals = [
        (k, manifest.get(k))
        for k in (
            "task",
            "model",
            "rows_in",
            "rows_out",
            "rows_quarantined",
            "units",
            "units_reused",
            "rows_labeled_this_run",
            "seconds",
            "rows_per_second",
            "precision",
            "output",
        )
    ]
    reasons = manifest.get("quarantine_reasons", {})
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>label run</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:0 1em}</style></head><body>"
        f"<h1>label run: {html.escape(str(manifest.get('model_name', '')))}</h1>{table(totals)}"
        f"<h2>{html.escape(counts_key.replace('_', ' '))}</h2>{chart}{table(counts.items())}"
        f"<h2>quarantine reasons</h2>{table(reasons.items()) if reasons else '<p>none</p>'}</body></html>"
    )
