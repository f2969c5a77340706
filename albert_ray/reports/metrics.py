"""Evaluation reports exactly as the reference recipe printed them (digits=4), plus JSON."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def classification_reports(gold: Sequence[str], pred: Sequence[str]) -> tuple[str, dict]:
    """sklearn ``classification_report(digits=4)`` over label strings, and accuracy / macro-F1."""
    from sklearn.metrics import accuracy_score, classification_report

    text = classification_report(gold, pred, digits=4, zero_division=0)
    data = classification_report(gold, pred, digits=4, zero_division=0, output_dict=True)
    data["accuracy"] = float(accuracy_score(gold, pred))
    return text, data


def multilabel_reports(gold: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> tuple[str, dict]:
    """sklearn ``classification_report(digits=4)`` over indicator matrices (micro / macro /
    weighted / samples averages), plus exact-match accuracy and Hamming loss."""
    from sklearn.metrics import accuracy_score, classification_report, hamming_loss

    kwargs = dict(target_names=list(labels), digits=4, zero_division=0)
    text = classification_report(gold, pred, **kwargs)
    data = classification_report(gold, pred, output_dict=True, **kwargs)
    data["accuracy"] = float(accuracy_score(gold, pred))
    data["hamming_loss"] = float(hamming_loss(gold, pred))
    text += f"\naccuracy (exact match): {data['accuracy']:.4f}\nhamming loss: {data['hamming_loss']:.4f}\n"
    return text, data


def ner_reports(
    gold_tags: list[list[str]], pred_tags: list[list[str]], scheme: str = "BIO", strict: bool = False
) -> tuple[str, dict]:
    """seqeval ``classification_report(digits=4)`` at entity level (``strict`` for BIOES)."""
    from seqeval.metrics import accuracy_score, classification_report

    kwargs: dict = {"digits": 4, "zero_division": 0}
    if strict:
        from seqeval.scheme import IOB2, IOBES

        kwargs.update(mode="strict", scheme=IOBES if scheme == "BIOES" else IOB2)
    text = classification_report(gold_tags, pred_tags, **kwargs)
    data = classification_report(gold_tags, pred_tags, output_dict=True, **kwargs)
    data = {k: {m: float(v) for m, v in d.items()} for k, d in data.items()}
    data["token_accuracy"] = float(accuracy_score(gold_tags, pred_tags))
    return text, data


def best_threshold(
    gold: np.ndarray, probs: np.ndarray, grid: Sequence[float] | None = None
) -> tuple[float, float]:
    """The decision threshold with the best micro-F1 on ``(gold, probs)``; ties go to 0.5's side."""
    from sklearn.metrics import f1_score

    grid = grid if grid is not None else np.round(np.arange(0.05, 0.96, 0.05), 2)
    scored = [(f1_score(gold, probs >= t, average="micro", zero_division=0), -abs(t - 0.5), t) for t in grid]
    f1, _, t = max(scored)
    return float(t), float(f1)
