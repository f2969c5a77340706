"""Model directories written by an earlier version keep loading and predicting the same.

``tests/data/model_before_mixed_precision`` was trained and saved (tiny config
``tests/data/tiny_albert_config.json``, sample NER data) by the version whose ALBERT attention was
keras-multi-head's own layer, with the predictions that version made.  tf-keras' ``.weights.h5``
files layer weights under snake-cased class names, so a renamed layer class silently breaks
loading; this test catches it, and checks the float16-safe attention computes the same numbers.
"""

import json
from pathlib import Path

import pytest

from albert_ray.inference.labeler import Labeler

MODEL = Path(__file__).parent / "data" / "model_before_mixed_precision"


def test_old_model_dir_loads_and_predicts_what_it_did():
    expected = json.loads((MODEL / "expected_predictions.json").read_text(encoding="utf-8"))
    got = Labeler.from_dir(MODEL).predict(expected["texts"])
    assert sum(len(p["entities"]) for p in expected["predictions"]) == 9
    for old, new in zip(expected["predictions"], got):
        assert [(e["start"], e["end"], e["label"], e["text"]) for e in new["entities"]] == [
            (e["start"], e["end"], e["label"], e["text"]) for e in old["entities"]
        ]
        assert [e["score"] for e in new["entities"]] == pytest.approx(
            [e["score"] for e in old["entities"]], abs=1e-5
        )


def test_bfloat16_labeling_keeps_float32_parts_and_agrees():
    """``precision="bfloat16"``: matmuls in bfloat16, LayerNorm / CRF / outputs float32, weights
    stored float32; on this trained model the entities equal float32's and scores stay close."""
    expected = json.loads((MODEL / "expected_predictions.json").read_text(encoding="utf-8"))
    fp32, bf16 = Labeler.from_dir(MODEL), Labeler.from_dir(MODEL, precision="bfloat16")
    assert (fp32.precision, bf16.precision) == ("float32", "bfloat16")
    policies = {layer.__class__.__name__: layer.dtype_policy.name for layer in bf16.model.layers}
    assert policies["MultiHeadAttention"] == "mixed_bfloat16" and policies["FeedForward"] == "mixed_bfloat16"
    assert policies["LayerNormalization"] == "float32" and policies["CRF"] == "float32"
    assert all(w.dtype == "float32" for w in bf16.model.weights)
    a, b = fp32.predict(expected["texts"]), bf16.predict(expected["texts"])
    for x, y in zip(a, b):
        assert [(e["start"], e["end"], e["label"]) for e in y["entities"]] == [
            (e["start"], e["end"], e["label"]) for e in x["entities"]
        ]
        assert [e["score"] for e in y["entities"]] == pytest.approx(
            [e["score"] for e in x["entities"]], abs=0.05
        )


def test_auto_precision_follows_the_cpu():
    from albert_ray.inference.labeler import resolve_precision
    from albert_ray.runtime.hardware import has_bf16

    wants_bf16 = has_bf16()
    assert resolve_precision("auto") == ("bfloat16" if wants_bf16 else "float32")
    assert resolve_precision("float16") == "float16"
    with pytest.raises(ValueError, match=r"precision='int8': must be one of"):
        resolve_precision("int8")
