"""``albert-ray export``: the SavedModel, loaded in a fresh process with plain TensorFlow (no
albert_ray, no TF_USE_LEGACY_KERAS), returns exactly what ``predict`` returns."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from albert_ray import modeldir
from albert_ray.model.tokenization import build_char_vocab
from albert_ray.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "张伟昨天在北京会见了新华社代表团。",
    "Hello world, 你好 world",
    "来自 Shanghai 的李明加入了清华大学 🎓。",
    "ＡＢＣ１２３，全角字符",
    "",
    "   ",
    "据人民日报社报道，王芳已经抵达上海。" * 167,
]  # the last: 3,006 characters
ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    embedding_size=16,
    max_position_embeddings=128,
    type_vocab_size=2,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    ln_type="postln",
    layout="albert_brightmart",
    initializer_range=0.5,
)
SPECS = {
    "classify": dict(labels=("体育", "汽车", "教育"), truncation="chunks"),
    "multilabel": dict(labels=("a", "b", "c", "d"), threshold=0.5),
    "ner": dict(labels=("LOC", "ORG", "PER"), stride=40),
}

LOADER = """
import json, sys, os
import numpy as np
import tensorflow as tf
assert "TF_USE_LEGACY_KERAS" not in os.environ
model = tf.saved_model.load(sys.argv[1])
texts = json.load(open(sys.argv[2], encoding="utf-8"))
out = model.signatures["serving_default"](texts=tf.constant(texts))
def plain(v):
    a = v.numpy()
    if v.dtype == tf.string and a.size:
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(a).tolist()
    return a.tolist()
print(json.dumps({"albert_ray_imported": any(m.startswith(("albert_ray", "keras_bert")) for m in sys.modules),
                  "outputs": {k: plain(v) for k, v in out.items()}}, ensure_ascii=False))
"""


def _served(saved: Path, tmp_path: Path) -> dict:
    (tmp_path / "texts.json").write_text(json.dumps(TEXTS, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "load.py").write_text(LOADER)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run(
        [sys.executable, str(tmp_path / "load.py"), str(saved), str(tmp_path / "texts.json")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["albert_ray_imported"] is False
    return result["outputs"]


@pytest.mark.slow  # CI runs NER (the in-graph Viterbi); -m slow all three tasks
@pytest.mark.parametrize("task", ["classify", "multilabel", pytest.param("ner", marks=pytest.mark.ci)])
def test_the_exported_model_returns_exactly_what_predict_returns(tmp_path, task):
    from albert_ray.inference.labeler import Labeler

    assert len(TEXTS[-1]) == 3006
    vocab = build_char_vocab(TEXTS[:4])
    spec = ModelSpec(
        task=task, encoder={**ENCODER, "vocab_size": len(vocab)}, max_len=64, dropout=0.0, **SPECS[task]
    )
    modeldir.create(tmp_path / "model", spec, vocab, seed=5)
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "albert_ray.cli",
            "export",
            "--model",
            str(tmp_path / "model"),
            "--output",
            str(tmp_path / "saved"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    served = _served(tmp_path / "saved", tmp_path)
    expected = Labeler.from_dir(tmp_path / "model").predict(TEXTS)
    if task == "classify":
        assert served["label"] == [p["label"] for p in expected]
        assert served["score"] == pytest.approx([p["score"] for p in expected], abs=1e-5)
        np.testing.assert_allclose(
            served["probs"], [[p["probs"][x] for x in spec.labels] for p in expected], atol=1e-5
        )
        assert len(set(served["label"])) > 1  # the random model does not answer one label for all
    elif task == "multilabel":
        got = [row[:n] for row, n in zip(served["labels"], served["num_labels"])]
        assert got == [p["labels"] for p in expected]
        np.testing.assert_allclose(
            served["scores"], [[p["scores"][x] for x in spec.labels] for p in expected], atol=1e-5
        )
        assert any(got) and not all(len(g) == len(spec.labels) for g in got)
    else:
        for i, p in enumerate(expected):
            n = served["num_entities"][i]
            got = [
                (served["starts"][i][j], served["ends"][i][j], served["labels"][i][j], served["texts"][i][j])
                for j in range(n)
            ]
            assert got == [(e["start"], e["end"], e["label"], e["text"]) for e in p["entities"]], TEXTS[i][
                :20
            ]
            assert served["scores"][i][:n] == pytest.approx([e["score"] for e in p["entities"]], abs=1e-5)
            assert all(TEXTS[i][s:e] == t for s, e, _, t in got)
        assert (
            served["num_entities"][-1] > 100 and served["num_entities"][4] == served["num_entities"][5] == 0
        )


def test_export_of_a_damaged_model_directory_is_one_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "albert_ray.cli",
            "export",
            "--model",
            str(tmp_path / "nope"),
            "--output",
            str(tmp_path / "saved"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"albert-ray export: error: model directory not found: {tmp_path / 'nope'}"
    ]
