"""From-scratch learning on the real corpora (skipped when ../shared/corpora is absent).

A small encoder (data/albert_config_sample.json: brightmart layout, pre-LN, H=128, 4 layers) with the
real brightmart vocab, random init, a bounded run per task on 2 CPU cores. Trivial baselines:
all-O NER and empty multi-label predictions score F1 0; the majority class of sogou's five
balanced classes scores accuracy 0.2.

Measured on the development machine (longer runs: 6 epochs on all of CLUENER train -> entity
micro-F1 0.563; People's Daily 0.380; DuEE 4 epochs micro-F1 0.791, Hamming loss 0.0063; sogou
8 epochs accuracy 0.735). The bounded runs below reach less; the thresholds sit well under what
they reach and well over the baselines.
"""

import pytest

from albert_ray.finetune.config import load_job_config
from albert_ray.finetune.driver import train_in_process

SMALL = ["model.encoder_config=data/albert_config_sample.json", "train.log_every=0", "train.patience=10"]

CASES = [
    (
        "cluener",
        [
            "data.max_train_examples=4000",
            "data.max_eval_examples=500",
            "train.epochs=3",
            "train.learning_rate=2e-3",
            "model.bilstm_units=0",
        ],
        ("micro avg", "f1-score"),
        0.15,
    ),
    (
        "peoples_daily",
        [
            "data.max_train_examples=3000",
            "data.max_eval_examples=400",
            "train.epochs=4",
            "train.learning_rate=2e-3",
            "model.bilstm_units=0",
        ],
        ("micro avg", "f1-score"),
        0.15,
    ),
    (
        "duee_multilabel",
        [
            "data.max_train_examples=4000",
            "data.max_eval_examples=500",
            "train.epochs=4",
            "train.learning_rate=2e-3",
            "model.max_len=128",
        ],
        ("micro avg", "f1-score"),
        0.3,
    ),
    (
        "sogou_classify",
        ["train.epochs=6", "train.learning_rate=1e-3", "model.max_len=256"],
        ("accuracy",),
        0.4,
    ),
]


# CI runs the shortest (CLUENER, ~1 min on AVX-512, ~3 on AVX2); `-m slow` runs all four
IN_CI = {"cluener"}


@pytest.mark.slow
@pytest.mark.corpora
@pytest.mark.parametrize(
    "name,overrides,metric,threshold",
    [pytest.param(*c, id=c[0], marks=[pytest.mark.ci] if c[0] in IN_CI else []) for c in CASES],
)
def test_from_scratch_model_beats_trivial_baseline(corpora, tmp_path, name, overrides, metric, threshold):
    cfg = load_job_config(
        f"jobs/configs/{name}.yaml", [f"output_dir={tmp_path}", *SMALL, *overrides, *_paths(name, corpora)]
    )
    summary = train_in_process(cfg)
    value = summary["metrics"]
    for key in metric:
        value = value[key]
    print(
        f"{name}: {'/'.join(metric)} = {value:.4f} on {summary['eval_examples']} {summary['eval_split']} "
        f"examples in {summary['seconds']} s"
    )
    assert value > threshold
    if name == "duee_multilabel":
        # predicting no label at all has a Hamming loss of (labels per row) / 65 ~ 0.016
        assert summary["metrics"]["hamming_loss"] < 0.015


def _paths(name, corpora):
    """Point the configs' ../shared/corpora paths at the fixture's folder (ALBERT_RAY_CORPORA)."""
    cfg = load_job_config(f"jobs/configs/{name}.yaml")
    out = []
    for key in ("data.train", "data.dev", "data.test", "model.vocab"):
        section, field = key.split(".")
        value = getattr(getattr(cfg, section), field)
        if value and "../shared/corpora/" in value:
            out.append(f"{key}={corpora / value.split('../shared/corpora/', 1)[1]}")
    return out
