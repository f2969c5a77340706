"""Parameter counts of the published configs equal closed-form counts derived here."""

import pytest

from albert_ray.model.encoder_config import EncoderConfig
from albert_ray.model.params import count_params, format_table, params_table


def block(h, i):
    attention = 4 * (h * h + h)
    ffn = h * i + i + i * h + h
    return attention + ffn + 2 * 2 * h  # two LayerNorms


def closed_form(c: dict, classes=5, positions=512):
    v, h, i, n = c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    head = h * classes + classes
    if "embedding_size" not in c:  # BERT
        return v * h + 2 * h + positions * h + 2 * h + n * block(h, i) + head
    e = c["embedding_size"]  # brightmart: V*E lookup, E*H projection, H-wide rest, one shared block
    return v * e + e * h + 2 * h + positions * h + 2 * h + block(h, i) + head


@pytest.mark.corpora
@pytest.mark.parametrize(
    "name,approx_millions",
    [
        ("albert_config_tiny.json", 4.08),
        ("albert_config_base.json", 10.29),
        ("albert_config_xlarge.json", 54.39),
        ("bert_config.json", 101.68),
    ],
)
def test_published_configs_match_closed_form(corpora, name, approx_millions):
    import json

    path = corpora / "albert_zh" / name
    row = count_params(EncoderConfig.from_json_file(path))
    expected = closed_form(json.loads(path.read_text()))
    assert row.total == row.trainable == expected
    assert round(row.total / 1e6, 2) == approx_millions


def test_params_table_over_a_folder(tmp_path):
    import json

    cfg = dict(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=24,
        embedding_size=8,
        max_position_embeddings=512,
        type_vocab_size=2,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        ln_type="postln",
    )
    (tmp_path / "albert_config_mini.json").write_text(json.dumps(cfg))
    rows = params_table(tmp_path)
    assert [(r.name, r.total) for r in rows] == [("albert_config_mini", closed_form(cfg))]
    text = format_table(rows)
    assert "albert_config_mini" in text and f"{closed_form(cfg):,}" in text
    with pytest.raises(FileNotFoundError, match="no \\*config\\*.json files in"):
        params_table(_empty(tmp_path))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d
