"""The model directory: a fresh one round-trips, an old one still checks, and every damaged or
inconsistent one is refused by :func:`modeldir.check` (no TensorFlow) in one line naming the file."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from albert_ray import modeldir
from albert_ray.model.encoder_config import EncoderConfig
from albert_ray.model.tokenization import Vocab
from albert_ray.modeldir import ModelDirError
from albert_ray.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
OLD = ROOT / "tests" / "data" / "model_before_mixed_precision"  # NER, 3 entity types, vocab 318


@pytest.fixture
def old(tmp_path):
    shutil.copytree(OLD, tmp_path / "m")
    return tmp_path / "m"


def _edit_spec(path, **changes):
    data = json.loads((path / "model.json").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    (path / "model.json").write_text(json.dumps(data))


def test_old_directory_checks_and_fresh_one_round_trips(old, tmp_path):
    spec, vocab = modeldir.check(old)
    assert (spec.task, spec.labels, spec.encoder.vocab_size, len(vocab)) == (
        "ner",
        ("LOC", "ORG", "PER"),
        318,
        318,
    )
    encoder = EncoderConfig.from_json_file(ROOT / "tests/data/tiny_albert_config.json")
    fresh = ModelSpec(task="classify", labels=("neg", "pos"), encoder=encoder, max_len=32)
    modeldir.create(tmp_path / "new", fresh, vocab, seed=3)
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "model.json",
        "model.weights.h5",
        "vocab.txt",
    ]
    spec2, vocab2 = modeldir.check(tmp_path / "new")
    assert spec2 == fresh and vocab2.tokens == vocab.tokens
    model, spec3, _ = modeldir.load(tmp_path / "new")
    assert spec3 == fresh and model.output_shape == (None, 2)


def test_check_needs_no_tensorflow(old):
    code = (
        f"import sys; from albert_ray import modeldir; modeldir.check({str(old)!r}); "
        f"print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_files(old, tmp_path):
    with pytest.raises(ModelDirError, match=f"^model directory not found: {tmp_path}/nope$"):
        modeldir.check(tmp_path / "nope")
    (old / "vocab.txt").unlink()
    with pytest.raises(ModelDirError) as err:
        modeldir.check(old)
    assert str(err.value) == (
        f"{old} is not a model directory: vocab.txt missing (a model directory is written by "
        f"'albert-ray train')"
    )


@pytest.mark.parametrize("size", [0, 4000])
def test_empty_or_truncated_weights(old, size):
    data = (old / "model.weights.h5").read_bytes()
    (old / "model.weights.h5").write_bytes(data[:size])
    with pytest.raises(ModelDirError) as err:
        modeldir.check(old)
    message = str(err.value)
    assert message.startswith(f"{old}/model.weights.h5: not a readable weights file (")
    assert message.endswith(
        f"; {size} bytes); it is damaged or truncated: copy it again from the training output"
    )
    assert "\n" not in message


def test_model_json_incomplete_or_truncated(old):
    text = (old / "model.json").read_text()
    (old / "model.json").write_text(text[:200])
    with pytest.raises(
        ModelDirError,
        match=rf"^{old}/model.json: not valid JSON \(.*\); the file is damaged or "
        rf"truncated$",
    ):
        modeldir.check(old)
    (old / "model.json").write_text(text)
    _edit_spec(old, labels=None)
    with pytest.raises(ModelDirError) as err:
        modeldir.check(old)
    assert str(err.value) == (
        f"{old}/model.json: missing field(s) ['labels']; a model directory's model.json is "
        f"written by training, not by hand"
    )
    (old / "model.json").write_text("[1, 2]")
    with pytest.raises(ModelDirError, match=f"^{old}/model.json: expected a JSON object, got list$"):
        modeldir.check(old)


def test_spec_that_does_not_fit_the_weights(old):
    _edit_spec(old, task="classify")
    with pytest.raises(ModelDirError) as err:
        modeldir.check(old)
    assert str(err.value) == (
        f"{old}/model.weights.h5: no classify output kernel of shape [16, 3], which "
        f"{old}/model.json (task classify, 3 labels) needs: the weights were saved for another "
        f"task or label set"
    )
    _edit_spec(old, task="ner", labels=["LOC", "PER"])
    with pytest.raises(ModelDirError, match=r"no CRF transition matrix of shape \[5, 5\]"):
        modeldir.check(old)


def test_vocab_larger_than_the_encoder(old):
    with open(old / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("".join(f"x{i}\n" for i in range(5)))
    with pytest.raises(ModelDirError) as err:
        modeldir.check(old)
    assert str(err.value) == (
        f"{old}/vocab.txt has 323 tokens but the encoder in {old}/model.json has vocab_size=318: "
        f"token ids beyond it have no embedding; use the vocab.txt the model was trained with"
    )


def test_encoder_edited_in_model_json(old):
    data = json.loads((old / "model.json").read_text())
    data["encoder"]["vocab_size"] = 400
    (old / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelDirError) as err:
        modeldir.check(old)
    assert str(err.value) == (
        f"{old}/model.weights.h5: token embeddings of 318 rows, but {old}/model.json describes "
        f"an encoder with vocab_size=400 and width 8: the weights belong to another model"
    )
    data["encoder"]["hidden_size"] = "wide"
    (old / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match=f"^{old}/model.json:encoder: "):
        modeldir.check(old)


def test_cli_predict_and_label_report_a_bad_directory_in_one_line(old, tmp_path):
    (old / "model.weights.h5").write_bytes(b"")
    (tmp_path / "in.txt").write_text("张伟在北京。\n", encoding="utf-8")
    for args in (
        ["predict", "--model", str(old), "张伟"],
        ["label", "--model", str(old), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "o")],
    ):
        out = subprocess.run([sys.executable, "-m", "albert_ray.cli", *args], capture_output=True, text=True)
        assert out.returncode == 2
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert lines == [
            f"albert-ray {args[0]}: error: {old}/model.weights.h5: not a readable weights file "
            f"(Unable to synchronously open file; 0 bytes); it is damaged or truncated: copy it again "
            f"from the training output"
        ]
    assert not (tmp_path / "o").exists()


def test_vocab_file_errors_name_the_file(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{tmp_path}/vocab.txt: vocab has no \\[PAD\\] token"):
        Vocab.from_file(tmp_path / "vocab.txt")


def test_unknown_task_in_model_json(old):
    _edit_spec(old, task="pos")
    with pytest.raises(ModelDirError) as err:
        modeldir.check(old)
    assert str(err.value) == f"{old}/model.json: task='pos': must be one of ('classify', 'multilabel', 'ner')"
