"""The task registry: the built-in tasks, and a new task added from this file alone — one class,
registered — that the job config, the model factory, the model directory, prediction, training
rows and the bulk-labeling schema all accept without any other change."""

import numpy as np
import pyarrow as pa
import pytest

from albert_ray import modeldir
from albert_ray.io.training_files import Example
from albert_ray.reports import metrics
from albert_ray.tasks.registry import TASK_REGISTRY, Task, register_task, task_for, task_names


class CharCountTask(Task):
    """Toy regression: predict a number per text (here: how many characters it has / 10)."""

    name = "char_count"

    def head(self, spec, sequence, cls):
        from tensorflow import keras

        return keras.layers.Dense(1, name="Head-Value", dtype="float32")(cls)

    def loss(self, model):
        import tensorflow as tf

        return lambda y, p: tf.square(tf.cast(y, tf.float32) - p[:, 0])

    def target_signature(self, spec):
        import tensorflow as tf

        return tf.TensorSpec([None], tf.float32)

    def pad_targets(self, targets):
        return np.asarray(targets, dtype=np.float32)

    def head_shapes(self, spec):
        return [("value kernel", (spec.encoder.hidden_size, 1))]

    def label_vocab(self, examples):
        return ("value",)

    def target(self, example, spec):
        return float(example.label)

    def decode(self, text, windows, outputs, spec, model):
        return {"value": float(outputs[0][0])}

    def report(self, examples, predictions, spec):
        err = np.mean([(float(e.label) - p["value"]) ** 2 for e, p in zip(examples, predictions)])
        return f"mse {err:.4f}", {"mse": float(err)}

    def dev_score(self, report):
        return -report["mse"]

    def output_fields(self, spec, include_probs):
        return [pa.field("value", pa.float32())]

    def output_columns(self, results, spec, include_probs):
        return {"value": [r["value"] for r in results]}

    def counted_values(self, table):
        return pa.array([], pa.string())


@pytest.fixture
def toy():
    task = register_task(CharCountTask())
    yield task
    del TASK_REGISTRY[task.name]


def test_builtin_registry():
    assert task_names() == ("classify", "multilabel", "ner")
    assert task_for("multilabel").read_options("BIO") == {"scheme": "BIO", "multilabel": True}
    assert task_for("ner").read_options("BIOES") == {"scheme": "BIOES"}
    with pytest.raises(ValueError, match=r"^task='pos': must be one of \('classify', 'multilabel', 'ner'\)$"):
        task_for("pos")


def test_a_task_registered_from_a_test_works_end_to_end(toy, tmp_path):
    from albert_ray.finetune.config import load_job_config
    from albert_ray.finetune.driver import featurize
    from albert_ray.inference.labeler import Labeler
    from albert_ray.label.store import output_schema
    from albert_ray.model.tokenization import build_char_vocab
    from albert_ray.spec import ModelSpec

    job = load_job_config("jobs/configs/sample_classify.yaml", ["task=char_count", "model.max_len=16"])
    texts = ["你好", "北京欢迎你", "今天天气很好啊"]
    examples = [Example(text=t, source=f"toy:{i}", label=str(len(t) / 10)) for i, t in enumerate(texts)]
    vocab = build_char_vocab(texts)
    from albert_ray.model.encoder_config import EncoderConfig

    encoder = EncoderConfig.from_json_file("tests/data/tiny_albert_config.json")
    spec = ModelSpec.from_job(job, toy.label_vocab(examples), encoder)
    assert (spec.task, spec.labels, spec.max_len) == ("char_count", ("value",), 16)

    rows = featurize(spec, vocab, examples)
    assert [r["target"] for r in rows] == [0.2, 0.5, 0.7]
    assert [len(r["token_ids"]) for r in rows] == [4, 7, 9]

    modeldir.create(tmp_path / "m", spec, vocab, seed=1)
    assert modeldir.check(tmp_path / "m")[0] == spec
    labeler = Labeler.from_dir(tmp_path / "m")
    predictions = labeler.predict(texts)
    assert [sorted(p) for p in predictions] == [["value"]] * 3
    assert all(isinstance(p["value"], float) for p in predictions)
    text, report = toy.report(examples, predictions, spec)
    assert report["mse"] == pytest.approx(
        np.mean([(len(t) / 10 - p["value"]) ** 2 for t, p in zip(texts, predictions)])
    )
    assert output_schema(spec).names == ["source", "line", "id", "value", "model_name", "model_version"]


def test_reports_use_the_reference_digits():
    text, _ = metrics.classification_reports(["a", "b"], ["a", "a"])
    assert "0.5000" in text


def test_output_norm_is_on_for_a_pre_ln_encoder_from_a_checkpoint_and_rebuilt_from_model_json(tmp_path):
    from dataclasses import replace

    import tensorflow as tf

    from albert_ray.finetune.config import load_job_config
    from albert_ray.model.encoder_config import EncoderConfig
    from albert_ray.spec import ModelSpec
    from albert_ray.tasks.registry import build_task_model

    preln = EncoderConfig.from_json_file("data/albert_config_sample.json")
    postln = replace(preln, ln_type="postln")
    job = load_job_config("jobs/configs/sample_ner.yaml")
    auto = {
        (enc.ln_type, init): ModelSpec.from_job(
            replace(job, model=replace(job.model, init=init)), ["PER"], enc
        ).output_norm
        for enc in (preln, postln)
        for init in ("none", "checkpoint")
    }
    assert auto == {
        ("preln", "none"): False,
        ("preln", "checkpoint"): True,
        ("postln", "none"): False,
        ("postln", "checkpoint"): False,
    }
    forced = load_job_config("jobs/configs/sample_ner.yaml", ["model.output_norm=false"])  # an override wins
    forced = replace(forced, model=replace(forced.model, init="checkpoint"))
    assert (
        forced.model.output_norm is False and ModelSpec.from_job(forced, ["PER"], preln).output_norm is False
    )
    spec = ModelSpec.from_job(replace(job, model=replace(job.model, output_norm=True)), ["PER"], preln)
    model = build_task_model(spec)
    x = np.array([[2, 5, 7, 3, 0, 0]], np.int32)
    probe = tf.keras.Model(model.inputs, model.get_layer("Head-Norm").output)
    normed = probe([x, np.zeros_like(x)]).numpy()
    assert np.allclose(normed.mean(-1), 0, atol=1e-4) and np.allclose(normed.std(-1), 1, atol=1e-3)
    again = ModelSpec.from_dict(spec.to_dict())
    assert again.output_norm is True and "Head-Norm" in [
        layer.name for layer in build_task_model(again).layers
    ]
    old = {
        k: v for k, v in spec.to_dict().items() if k != "output_norm"
    }  # a model.json written before the field
    assert ModelSpec.from_dict(old).output_norm is False
