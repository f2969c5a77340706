"""Reports are exactly what sklearn / seqeval print when called directly."""

import numpy as np
from seqeval.metrics import classification_report as seqeval_report
from sklearn.metrics import classification_report, hamming_loss

from albert_ray.reports.metrics import best_threshold, classification_reports, multilabel_reports, ner_reports


def test_classification_report_identical_to_sklearn():
    gold = ["体育", "健康", "体育", "军事", "教育", "汽车", "汽车"]
    pred = ["体育", "体育", "体育", "军事", "汽车", "汽车", "汽车"]
    text, data = classification_reports(gold, pred)
    assert text == classification_report(gold, pred, digits=4, zero_division=0)
    assert data["accuracy"] == 5 / 7


def test_multilabel_report_identical_to_sklearn_plus_hamming_and_exact_match():
    gold = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    pred = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 1]])
    text, data = multilabel_reports(gold, pred, ["a", "b", "c"])
    assert text.startswith(
        classification_report(gold, pred, target_names=["a", "b", "c"], digits=4, zero_division=0)
    )
    assert data["accuracy"] == 0.5 and data["hamming_loss"] == hamming_loss(gold, pred) == 2 / 12
    assert "hamming loss: 0.1667" in text and "samples avg" in text


def test_ner_report_identical_to_seqeval():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "I-ORG", "O"]]
    text, data = ner_reports(gold, pred)
    assert text == seqeval_report(gold, pred, digits=4, zero_division=0)
    assert data["micro avg"]["precision"] == 1.0 and data["micro avg"]["recall"] == 2 / 3


def test_best_threshold_maximises_micro_f1():
    gold = np.array([[1, 0], [0, 1], [1, 1]])
    probs = np.array([[0.3, 0.1], [0.2, 0.35], [0.32, 0.4]])
    t, f1 = best_threshold(gold, probs)
    assert 0.2 < t <= 0.3 and f1 == 1.0
