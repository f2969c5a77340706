import json

import pytest

from albert_ray.model.encoder_config import EncoderConfig
from albert_ray.model.memory_planner import count_parameters, estimate, parse_size, recommend
from albert_ray.model.params import count_params

TINY = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    embedding_size=16,
    max_position_embeddings=64,
    type_vocab_size=2,
)


@pytest.mark.parametrize(
    "layout_keys", [{"ln_type": "postln"}, {"num_hidden_groups": 1}, {"embedding_size": None}]
)
def test_closed_form_parameters_equal_the_built_model(tmp_path, layout_keys):
    cfg = {**TINY, **layout_keys}
    if cfg["embedding_size"] is None:
        del cfg["embedding_size"]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    c = EncoderConfig.from_json_file(path)
    assert count_parameters(c, num_labels=5) == count_params(c, num_classes=5, seq_len=64).total


def test_activation_formula_and_mixed_precision():
    c = EncoderConfig.from_dict(TINY)
    fp32, fp16 = estimate(c, 16), estimate(c, 16, mixed_precision=True)
    hidden, intermediate, attention = (
        3 * 17 * 16 * 32 + 16 * (16 + 4 * 32),
        3 * 6 * 16 * 64,
        3 * 2 * 4 * 16**2,
    )
    assert fp32.activation_bytes_per_example == 4 * (hidden + intermediate + attention)
    # mixed_float16 halves only the feed-forward activations (LayerNorm and softmax stay float32)
    assert fp16.activation_bytes_per_example == 4 * hidden + 2 * intermediate + 4 * attention
    assert fp32.attention_bytes_per_example == fp16.attention_bytes_per_example == 4 * attention
    assert (
        fp32.weights_optimizer_bytes == 16 * fp32.parameters
        and fp16.weights_optimizer_bytes == 18 * fp16.parameters
    )
    block = 4 * (32 * 32 + 32) + 32 * 64 + 64 + 64 * 32 + 32 + 4 * 32
    assert fp32.shared_gradient_bytes == 4 * block * 2  # 3 uses of the shared block: 2 extra gradient copies


@pytest.mark.corpora
def test_xlarge_recommendations(corpora):
    c = EncoderConfig.from_json_file(corpora / "albert_zh" / "albert_config_xlarge.json")
    plans = {gib: recommend(c, parse_size(f"{gib}GiB"), 256, target_global_batch=32) for gib in (16, 24, 80)}
    assert [(p.per_gpu_batch, p.accumulation_steps) for p in plans.values()] == [(2, 16), (4, 8), (16, 2)]
    assert all(p.global_batch == 32 and p.estimated_bytes <= 0.9 * p.gpu_bytes for p in plans.values())
    two = recommend(c, parse_size("16GiB"), 256, target_global_batch=32, num_gpus=2, mixed_precision=True)
    assert (two.per_gpu_batch, two.accumulation_steps, two.global_batch) == (4, 4, 32)
    with pytest.raises(ValueError, match="does not fit in 2.0 GiB"):
        recommend(c, parse_size("2GiB"), 512)


def test_parse_size():
    assert (
        parse_size("16GiB") == 16 * 1024**3
        and parse_size("800MiB") == 800 * 1024**2
        and parse_size("1.5G") == int(1.5 * 1024**3)
    )
    with pytest.raises(ValueError, match="expected a number with a unit"):
        parse_size("lots")
