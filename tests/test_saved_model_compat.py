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

from albert_ray.predict import Labeler

MODEL = Path(__file__).parent / "data" / "model_before_mixed_precision"


def test_old_model_dir_loads_and_predicts_what_it_did():
    expected = json.loads((MODEL / "expected_predictions.json").read_text(encoding="utf-8"))
    got = Labeler.from_dir(MODEL).predict(expected["texts"])
    assert sum(len(p["entities"]) for p in expected["predictions"]) == 9
    for old, new in zip(expected["predictions"], got):
        assert [(e["start"], e["end"], e["label"], e["text"]) for e in new["entities"]] == \
               [(e["start"], e["end"], e["label"], e["text"]) for e in old["entities"]]
        assert [e["score"] for e in new["entities"]] == pytest.approx([e["score"] for e in old["entities"]], abs=1e-5)
