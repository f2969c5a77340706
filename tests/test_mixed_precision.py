"""Mixed precision (mixed_float16 + dynamic loss scaling): the ALBERT encoders compute in float16
with float32 variables, LayerNorm, attention softmax and task outputs; a checkpoint loads into a
mixed model and matches the float32 numpy reference to float16 accuracy; training runs with loss
scaling and the loss-scale state survives a resume."""

import json
import math

import numpy as np
import pytest
from tensorflow import keras
from test_encoder_checkpoint import V, random_variables, reference_forward, tiny

from albert_ray.finetune.config import load_job_config
from albert_ray.finetune.driver import train_in_process
from albert_ray.model import encoder
from albert_ray.model.checkpoint import load_checkpoint, write_variables
from albert_ray.model.encoder import build_encoder, dtype_policy
from albert_ray.model.encoder_config import EncoderConfig
from albert_ray.runtime.optimizer import optimizer_state
from albert_ray.spec import ModelSpec
from albert_ray.tasks.registry import build_task_model


@pytest.mark.parametrize(
    "layout,extra",
    [
        ("albert_brightmart", {}),
        ("albert_brightmart", {"ln_type": "preln"}),
        ("albert_google", {"num_hidden_layers": 4, "num_hidden_groups": 2, "inner_group_num": 2}),
    ],
    ids=["brightmart", "brightmart-preln", "google-groups"],
)
def test_checkpoint_in_a_mixed_model_matches_the_float32_reference(tmp_path, layout, extra):
    rng = np.random.default_rng(3)
    cfg = tiny(layout, **extra)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    config = EncoderConfig.from_json_file(tmp_path / "config.json")
    variables = random_variables(layout, cfg, rng)
    write_variables(tmp_path / "ckpt" / "model.ckpt", variables)

    with dtype_policy("mixed_float16"):
        model = build_encoder(config)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored for later models
    load_checkpoint(model, config, tmp_path / "ckpt")
    assert {w.dtype.name for w in model.weights} == {"float32"}  # master weights stay float32
    policies = {layer.name: layer.dtype_policy.name for layer in model.layers}
    assert {p for name, p in policies.items() if name.endswith("MultiHeadSelfAttention")} == {"mixed_float16"}
    assert {p for name, p in policies.items() if name.endswith("Norm")} == {"float32"}

    ids = rng.integers(1, V, size=(3, 12))
    ids[1, 7:] = 0
    seg = np.zeros_like(ids)
    seq, cls = (np.asarray(o, dtype=np.float32) for o in model([ids, seg]))
    expected = reference_forward(layout, cfg, variables, ids, seg)
    real = ids != 0
    err = np.abs(seq[real] - expected[real])
    # float16 keeps ~3 decimal digits; outputs are LayerNorm-scale (|x| ~ 1)
    assert err.max() < 3e-2 and err.mean() < 5e-3, (err.max(), err.mean())
    assert np.abs(seq[real] - expected[real]).max() > 0  # it really ran in float16


def test_task_outputs_are_float32_under_mixed_precision():
    config = EncoderConfig.from_json_file("data/albert_config_sample.json")
    for task, labels, layer in [
        ("ner", ("LOC", "PER"), "CRF"),
        ("classify", ("a", "b"), "Head-Softmax"),
        ("multilabel", ("a", "b"), "Head-Sigmoid"),
    ]:
        spec = ModelSpec(
            task=task, labels=labels, encoder={**config.to_dict(), "layout": config.layout}, max_len=32
        )
        with dtype_policy("mixed_float16"):
            model = build_task_model(spec)
        assert model.get_layer(layer).dtype_policy.name == "float32"
        assert model.get_layer("Encoder-Shared-FeedForward").dtype_policy.name == "mixed_float16"
        out = model([np.array([[2, 5, 7, 3, 0]]), np.zeros((1, 5), dtype=np.int64)])
        assert out.dtype.name == "float32"


def test_attention_probabilities_are_float32_and_padding_keys_get_nothing():
    """encoder.attention_probs (plain ops in every path, pre-training included): bfloat16 scores
    give float32 probabilities equal to the float32 softmax of the masked, scaled scores."""
    import tensorflow as tf

    scores = tf.random.stateless_normal([6, 5, 7], seed=[0, 5]) * 4.0
    keep = tf.constant([[1, 1, 1, 1, 0, 0, 0]] * 3 + [[1, 1, 1, 1, 1, 1, 1]] * 3, tf.float32)
    probs = encoder.attention_probs(tf.cast(scores, tf.bfloat16), keep, 0.5)
    assert probs.dtype == tf.float32
    expected = tf.nn.softmax(
        tf.cast(tf.cast(scores, tf.bfloat16), tf.float32) * 0.5 - 10000.0 * (1.0 - keep[:, None, :])
    )
    np.testing.assert_allclose(probs.numpy(), expected.numpy(), atol=1e-6)
    assert probs.numpy()[:3, :, 4:].max() == 0.0  # padding keys get nothing
    np.testing.assert_allclose(probs.numpy().sum(-1), 1.0, atol=1e-6)


def test_bert_layout_refuses_mixed_precision_with_the_reason(tmp_path):
    (tmp_path / "bert.json").write_text(json.dumps(tiny("bert")))
    config = EncoderConfig.from_json_file(tmp_path / "bert.json")
    with dtype_policy("mixed_float16"), pytest.raises(ValueError, match="not available for the BERT layout"):
        build_encoder(config)


def test_loss_scale_state_is_part_of_the_resume_state():
    import tensorflow as tf

    var = tf.Variable([1.0, 2.0])
    opt = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.AdamW(1e-3))
    opt.build([var])
    opt.apply_gradients([(tf.constant([np.inf, 1.0]), var)])  # overflow: skipped, scale halved
    opt.apply_gradients([(tf.constant([0.5, 1.0]), var)])
    assert float(opt.loss_scale) == 2.0**14
    saved = [v.numpy() for v in optimizer_state(opt)]
    assert len(saved) == len(opt.variables) + 2

    fresh = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.AdamW(1e-3))
    fresh.build([tf.Variable([0.0, 0.0])])
    for v, value in zip(optimizer_state(fresh), saved):
        v.assign(value)
    assert float(fresh.loss_scale) == 2.0**14 and int(fresh.iterations.numpy()) == 2


def narrow_encoder(folder) -> str:
    """The sample encoder at a quarter of its width: this CPU runs float16 matmuls in a reference
    kernel (``encoder.FLOAT16_ON_CPU``), which made a float16 test at full width take 3 minutes."""
    config = json.loads(open("data/albert_config_sample.json").read())
    config.update(hidden_size=32, intermediate_size=128, embedding_size=32, num_attention_heads=2)
    path = folder / "albert_config_narrow.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_float16_without_a_gpu_is_one_warning_per_process(caplog):
    encoder._warn_float16_without_gpu.cache_clear()
    for policy in ("mixed_float16", "mixed_bfloat16", "mixed_float16"):
        with dtype_policy(policy):
            pass
    assert [r.getMessage() for r in caplog.records if r.name == "albert_ray.model.encoder"] == [
        encoder.FLOAT16_ON_CPU
    ]
    assert encoder.FLOAT16_ON_CPU.startswith("train.precision=mixed_float16 without a GPU: ")


@pytest.mark.slow
@pytest.mark.ci  # in-process training
def test_mixed_precision_training_scales_the_loss_and_learns(tmp_path):
    base = [
        f"output_dir={tmp_path}",
        "train.log_every=0",
        "train.epochs=2",
        "data.max_train_examples=256",
        "train.learning_rate=1e-2",
        "model.init=none",  # a random narrow encoder, not the bundled one
        f"model.encoder_config={narrow_encoder(tmp_path)}",
    ]
    summary = train_in_process(
        load_job_config("jobs/configs/sample_ner.yaml", [*base, "train.mixed_precision=true"])
    )
    first, last = summary["history"]
    assert summary["steps"] == 16  # 256 rows / 32 x 2 epochs; skipped updates still count as steps
    # every skipped (overflowing) update halved the scale, from tf-keras' initial 2**15
    assert last["skipped_steps"] == round(math.log2(2.0**15 / last["loss_scale"]))
    assert 0 <= last["skipped_steps"] < 8
    assert math.isfinite(first["train_loss"]) and last["train_loss"] < first["train_loss"]
    assert (
        summary["metrics"]["micro avg"]["f1-score"] > 0.02
    )  # learnt something; the model reloads in float32


@pytest.mark.slow
@pytest.mark.ci  # in-process training
def test_bfloat16_training_follows_float32(tmp_path):
    """``train.precision=mixed_bfloat16``: matmuls in bfloat16, no loss scaling (float32's range),
    CRF, LayerNorm and the loss in float32; the losses stay within a few percent of float32's."""
    base = [
        f"output_dir={tmp_path}",
        "train.log_every=0",
        "train.epochs=2",
        "data.max_train_examples=256",
        "train.learning_rate=3e-3",
    ]
    fp32 = train_in_process(load_job_config("jobs/configs/sample_ner.yaml", base))
    bf16 = train_in_process(
        load_job_config(
            "jobs/configs/sample_ner.yaml", [*base, "name=bf16", "train.precision=mixed_bfloat16"]
        )
    )
    assert bf16["steps"] == fp32["steps"] == 16
    assert "loss_scale" not in bf16["history"][-1]
    for a, b in zip(fp32["history"], bf16["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
    assert bf16["history"][-1]["train_loss"] < bf16["history"][0]["train_loss"]


def test_precision_setting_and_its_alias():
    job = load_job_config("jobs/configs/sample_ner.yaml", ["train.mixed_precision=true"])
    assert job.policy == "mixed_float16"
    assert (
        load_job_config("jobs/configs/sample_ner.yaml", ["train.precision=mixed_bfloat16"]).policy
        == "mixed_bfloat16"
    )
    with pytest.raises(
        ValueError,
        match=r"^train.precision='fp8': must be one of \['auto', 'float32', 'mixed_float16', "
        r"'mixed_bfloat16'\]$",
    ):
        load_job_config("jobs/configs/sample_ner.yaml", ["train.precision=fp8"])


ZEN3_AVX2 = frozenset("fpu sse4_2 avx avx2 fma bmi2 sha_ni vaes vpclmulqdq".split())
EPYC_AMX = ZEN3_AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"}


@pytest.mark.parametrize("flags,expected", [(ZEN3_AVX2, "float32"), (EPYC_AMX, "mixed_bfloat16")])
def test_auto_precision_is_bfloat16_only_where_the_cpu_has_bfloat16_instructions(
    monkeypatch, flags, expected
):
    """``train.precision: auto`` (the default of fine-tuning and pre-training) resolves on the
    worker from its CPU's flags (faked here); explicit settings are kept; keras-bert's BERT layout
    stays float32 under auto (its attention is float32-only)."""
    from albert_ray.finetune.worker import WorkerConfig
    from albert_ray.model.tokenization import Vocab
    from albert_ray.pretrain.config import load_pretrain_config
    from albert_ray.pretrain.worker import PretrainWorker
    from albert_ray.runtime import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    job = load_job_config("jobs/configs/sample_ner.yaml")
    assert job.train.precision == "auto"
    spec = ModelSpec.from_job(job, ["O"], EncoderConfig.from_json_file("data/albert_config_sample.json"))
    worker = WorkerConfig(
        job=job, spec=spec, vocab=Vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]), dev=[]
    )
    assert worker.policy == expected
    pinned = load_job_config("jobs/configs/sample_ner.yaml", ["train.precision=float32"])
    assert (
        WorkerConfig(
            job=pinned, spec=spec, vocab=Vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]), dev=[]
        ).policy
        == "float32"
    )
    assert hardware.training_precision("auto", "bert", flags) == "float32"
    pre = load_pretrain_config("jobs/configs/pretrain/bundled.yaml", [], ["a.txt"])
    assert (
        PretrainWorker(
            cfg=pre, encoder=spec.encoder, vocab=Vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        ).policy
        == expected
    )
