"""Encoders and checkpoints: a random checkpoint written with the published variable names must
load and reproduce an independent numpy forward pass of the published architecture."""

import json
import math

import numpy as np
import pytest

from albert_ray.model.checkpoint import (
    CheckpointError,
    detect_layout,
    encoder_variables,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    write_variables,
)
from albert_ray.model.encoder import build_encoder
from albert_ray.model.encoder_config import ConfigError, EncoderConfig

V, E, H, N, I, P, L = 100, 16, 32, 4, 64, 40, 2  # noqa: E741 (the papers' names: I the intermediate size)


def tiny(layout, **extra):
    d = dict(
        vocab_size=V,
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=N,
        intermediate_size=I,
        max_position_embeddings=P,
        type_vocab_size=2,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if layout == "albert_brightmart":
        d.update(embedding_size=E, ln_type="postln")
    if layout == "albert_google":
        d.update(embedding_size=E, num_hidden_groups=1, inner_group_num=1)
    d.update(extra)
    return d


# ---- the test's own reference: names and math from the published modeling.py files ----------
def random_variables(layout, cfg, rng):
    r = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)  # noqa: E731
    ln = lambda s, w: {f"{s}/gamma": 1 + r(w), f"{s}/beta": r(w)}  # noqa: E731
    dense = lambda s, a, b: {f"{s}/kernel": r(a, b), f"{s}/bias": r(b)}  # noqa: E731
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    e = cfg.get("embedding_size", h)
    v = {}
    emb_w = h if layout != "albert_google" else e
    v["bert/embeddings/word_embeddings"] = r(cfg["vocab_size"], e)
    v["bert/embeddings/token_type_embeddings"] = r(2, emb_w)
    v["bert/embeddings/position_embeddings"] = r(cfg["max_position_embeddings"], emb_w)
    v.update(ln("bert/embeddings/LayerNorm", emb_w))
    if layout == "albert_brightmart":
        v["bert/embeddings/word_embeddings_2"] = r(e, h)
    if layout == "albert_google":
        v.update(dense("bert/encoder/embedding_hidden_mapping_in", e, h))

    def bert_block(s):
        for n in ("query", "key", "value"):
            v.update(dense(f"{s}/attention/self/{n}", h, h))
        v.update(dense(f"{s}/attention/output/dense", h, h))
        v.update(ln(f"{s}/attention/output/LayerNorm", h))
        v.update(dense(f"{s}/intermediate/dense", h, i))
        v.update(dense(f"{s}/output/dense", i, h))
        v.update(ln(f"{s}/output/LayerNorm", h))

    if layout == "bert":
        for k in range(cfg["num_hidden_layers"]):
            bert_block(f"bert/encoder/layer_{k}")
    elif layout == "albert_brightmart":
        bert_block("bert/encoder/layer_shared")
    else:
        groups = sorted(
            {
                int(k / cfg["num_hidden_layers"] * cfg["num_hidden_groups"])
                for k in range(cfg["num_hidden_layers"])
            }
        )
        for g in groups:
            for j in range(cfg["inner_group_num"]):
                s = f"bert/encoder/transformer/group_{g}/inner_group_{j}"
                for n in ("query", "key", "value"):
                    v.update(dense(f"{s}/attention_1/self/{n}", h, h))
                v.update(dense(f"{s}/attention_1/output/dense", h, h))
                v.update(ln(f"{s}/LayerNorm", h))
                v.update(dense(f"{s}/ffn_1/intermediate/dense", h, i))
                v.update(dense(f"{s}/ffn_1/intermediate/output/dense", i, h))
                v.update(ln(f"{s}/LayerNorm_1", h))
    # things a real checkpoint carries that the encoder ignores
    v.update(dense("bert/pooler/dense", h, h))
    v["global_step"] = np.array(7, dtype=np.int64)
    v["cls/predictions/output_bias"] = r(cfg["vocab_size"])
    return v


def np_layer_norm(x, g, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def np_gelu(x, exact):
    if exact:
        from scipy.special import erf

        return 0.5 * x * (1 + erf(x / math.sqrt(2)))
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def reference_forward(layout, cfg, v, ids, seg):
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    d = h // nh
    mask = (ids != 0).astype(np.float64)
    v = {k: np.asarray(a, np.float64) for k, a in v.items()}
    t = ids.shape[1]
    x = v["bert/embeddings/word_embeddings"][ids]
    if layout == "albert_brightmart":
        x = x @ v["bert/embeddings/word_embeddings_2"]
    x = x + v["bert/embeddings/token_type_embeddings"][seg] + v["bert/embeddings/position_embeddings"][:t]
    x = np_layer_norm(x, v["bert/embeddings/LayerNorm/gamma"], v["bert/embeddings/LayerNorm/beta"])
    if layout == "albert_google":
        x = (
            x @ v["bert/encoder/embedding_hidden_mapping_in/kernel"]
            + v["bert/encoder/embedding_hidden_mapping_in/bias"]
        )

    def attention(x, q, k, vv, o):
        def heads(w):
            y = x @ v[f"{w}/kernel"] + v[f"{w}/bias"]
            return y.reshape(y.shape[0], t, nh, d).transpose(0, 2, 1, 3)

        s = heads(q) @ heads(k).transpose(0, 1, 3, 2) / math.sqrt(d)
        s = s - 10000.0 * (1 - mask[:, None, None, :])
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        c = (p @ heads(vv)).transpose(0, 2, 1, 3).reshape(x.shape[0], t, h)
        return c @ v[f"{o}/kernel"] + v[f"{o}/bias"]

    def ffn(x, a, b):
        y = np_gelu(x @ v[f"{a}/kernel"] + v[f"{a}/bias"], exact=layout == "bert")
        return y @ v[f"{b}/kernel"] + v[f"{b}/bias"]

    def ln(x, s):
        return np_layer_norm(x, v[f"{s}/gamma"], v[f"{s}/beta"])

    for k in range(cfg["num_hidden_layers"]):
        if layout == "albert_google":
            g = int(k / cfg["num_hidden_layers"] * cfg["num_hidden_groups"])
            for j in range(cfg["inner_group_num"]):
                s = f"bert/encoder/transformer/group_{g}/inner_group_{j}"
                a = ln(
                    x
                    + attention(
                        x,
                        f"{s}/attention_1/self/query",
                        f"{s}/attention_1/self/key",
                        f"{s}/attention_1/self/value",
                        f"{s}/attention_1/output/dense",
                    ),
                    f"{s}/LayerNorm",
                )
                x = ln(
                    a + ffn(a, f"{s}/ffn_1/intermediate/dense", f"{s}/ffn_1/intermediate/output/dense"),
                    f"{s}/LayerNorm_1",
                )
            continue
        s = f"bert/encoder/layer_{k}" if layout == "bert" else "bert/encoder/layer_shared"
        args = (
            f"{s}/attention/self/query",
            f"{s}/attention/self/key",
            f"{s}/attention/self/value",
            f"{s}/attention/output/dense",
        )
        if cfg.get("ln_type") == "preln":
            a = x + attention(ln(x, f"{s}/attention/output/LayerNorm"), *args)
            x = a + ffn(ln(a, f"{s}/output/LayerNorm"), f"{s}/intermediate/dense", f"{s}/output/dense")
        else:
            a = ln(x + attention(x, *args), f"{s}/attention/output/LayerNorm")
            x = ln(a + ffn(a, f"{s}/intermediate/dense", f"{s}/output/dense"), f"{s}/output/LayerNorm")
    return x


CASES = [
    ("bert", {}),
    ("albert_brightmart", {}),
    ("albert_brightmart", {"ln_type": "preln"}),
    ("albert_google", {}),
    ("albert_google", {"num_hidden_layers": 4, "num_hidden_groups": 2, "inner_group_num": 2}),
]


@pytest.mark.parametrize(
    "layout,extra", CASES, ids=["bert", "brightmart", "brightmart-preln", "google", "google-groups"]
)
def test_checkpoint_round_trip_matches_numpy_reference(tmp_path, layout, extra):
    rng = np.random.default_rng(0)
    cfg = tiny(layout, **extra)
    (tmp_path / "albert_config.json").write_text(json.dumps(cfg))
    config = EncoderConfig.from_json_file(tmp_path / "albert_config.json")
    assert config.layout == layout
    variables = random_variables(layout, cfg, rng)
    write_variables(tmp_path / "ckpt" / "model.ckpt-100", variables)

    model = build_encoder(config)
    report = load_checkpoint(model, config, tmp_path / "ckpt")
    assert report.layout == layout
    assert report.assigned == sum(1 for k in variables if k.startswith("bert/") and "pooler" not in k)

    ids = rng.integers(1, V, size=(3, 12))
    ids[1, 7:] = 0  # padding
    ids[2, 3:] = 0
    seg = np.zeros_like(ids)
    seg[0, 6:] = 1
    seq, cls = model.predict([ids, seg], verbose=0)
    expected = reference_forward(layout, cfg, variables, ids, seg)
    real = ids != 0
    np.testing.assert_allclose(seq[real], expected[real], atol=1e-5, rtol=0)
    np.testing.assert_allclose(cls, expected[:, 0], atol=1e-5, rtol=0)

    # export and reload: identical tensors under the same names
    save_checkpoint(model, config, tmp_path / "export" / "model.ckpt")
    model2 = build_encoder(config)
    load_checkpoint(model2, config, tmp_path / "export" / "model.ckpt.index")
    for name, value in encoder_variables(model2, config).items():
        np.testing.assert_array_equal(value, variables[name])


def _write(tmp_path, layout, **extra):
    cfg = tiny(layout, **extra)
    path = tmp_path / f"{layout}.json"
    path.write_text(json.dumps(cfg))
    return cfg, EncoderConfig.from_json_file(path)


def test_wrong_layout_names_the_real_one(tmp_path):
    cfg, _ = _write(tmp_path, "albert_google")
    write_variables(
        tmp_path / "g" / "model.ckpt", random_variables("albert_google", cfg, np.random.default_rng(1))
    )
    _, bright = _write(tmp_path, "albert_brightmart")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_encoder(bright), bright, tmp_path / "g")
    msg = str(err.value)
    assert "is a Google-format ALBERT" in msg and "describes a brightmart ALBERT" in msg
    assert "albert_config_*_google.json" in msg


def test_missing_unexpected_and_shape_conflicts_in_one_message(tmp_path):
    cfg, config = _write(tmp_path, "albert_brightmart")
    v = random_variables("albert_brightmart", cfg, np.random.default_rng(2))
    del v["bert/encoder/layer_shared/output/LayerNorm/beta"]
    v["bert/encoder/layer_shared/extra/kernel"] = np.zeros((2, 2), np.float32)
    v["bert/embeddings/word_embeddings"] = np.zeros((V + 5, E), np.float32)
    write_variables(tmp_path / "c" / "model.ckpt", v)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_encoder(config), config, tmp_path / "c" / "model.ckpt")
    msg = str(err.value)
    assert "missing variables (1): bert/encoder/layer_shared/output/LayerNorm/beta" in msg
    assert "unexpected variables (1): bert/encoder/layer_shared/extra/kernel" in msg
    assert (
        f"shape conflicts (1): bert/embeddings/word_embeddings: checkpoint [{V + 5}, {E}] vs model [{V}, {E}]"
        in msg
    )


def test_resolve_checkpoint_paths(tmp_path):
    cfg, _ = _write(tmp_path, "bert")
    prefix = write_variables(
        tmp_path / "d" / "model.ckpt-36000", random_variables("bert", cfg, np.random.default_rng(3))
    )
    assert resolve_checkpoint(prefix) == prefix
    assert resolve_checkpoint(prefix + ".index") == prefix
    assert resolve_checkpoint(prefix + ".data-00000-of-00001") == prefix
    assert resolve_checkpoint(tmp_path / "d") == prefix
    # albert_zh base_36k ships a `checkpoint` file pointing at the author's own disk
    (tmp_path / "d" / "checkpoint").write_text(
        'model_checkpoint_path: "/home/author/albert_base/model.ckpt-36000"\n'
    )
    assert resolve_checkpoint(tmp_path / "d") == prefix
    with pytest.raises(FileNotFoundError, match="no TensorFlow checkpoint at .*nothing"):
        resolve_checkpoint(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no TensorFlow checkpoint in directory .*empty"):
        resolve_checkpoint(tmp_path / "empty")


def test_detect_layout_of_unknown_names():
    assert detect_layout(["bert/encoder/layer_3/output/dense/kernel"]) == "bert"
    with pytest.raises(CheckpointError, match="cannot tell the layout.*foo/bar"):
        detect_layout(["foo/bar", "global_step"])


@pytest.mark.parametrize(
    "change,message",
    [
        ({"hidden_size": 30}, "hidden_size=30: must be divisible by num_attention_heads=4"),
        ({"hidden_act": "mish"}, "hidden_act='mish': must be one of"),
        ({"ln_type": "sandwich"}, "ln_type='sandwich': must be one of"),
        ({"hiden_size": 32}, "unknown config key(s) ['hiden_size']"),
        ({"num_hidden_layers": 0}, "num_hidden_layers=0: must be a positive integer"),
        ({"net_structure_type": 1}, "net_structure_type=1: only 0 is supported"),
    ],
)
def test_bad_config_errors_name_file_and_key(tmp_path, change, message):
    cfg = tiny("albert_brightmart")
    cfg.update(change)
    path = tmp_path / "albert_config_bad.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as err:
        EncoderConfig.from_json_file(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_config_file_and_bad_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder config not found"):
        EncoderConfig.from_json_file(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="broken.json: not valid JSON"):
        EncoderConfig.from_json_file(tmp_path / "broken.json")


def test_seq_len_over_positions_names_both_values(tmp_path):
    _, config = _write(tmp_path, "albert_brightmart")
    with pytest.raises(ValueError, match=f"max_seq_length=64 exceeds max_position_embeddings={P}"):
        build_encoder(config, seq_len=64)


@pytest.mark.parametrize(
    "layout, first",
    [
        (
            "bert",
            [
                "Embedding-Token",
                "Embedding-Segment",
                "Embedding-Position",
                "Embedding-Norm",
                "Encoder-1-MultiHeadSelfAttention",
            ],
        ),
        (
            "albert_brightmart",
            [
                "Embedding-Token",
                "Embedding-Token-Projection",
                "Embedding-Segment",
                "Embedding-Position",
                "Embedding-Norm",
            ],
        ),
        (
            "albert_google",
            [
                "Embedding-Token",
                "Embedding-Segment",
                "Embedding-Position",
                "Embedding-Norm",
                "Embedding-Mapping",
            ],
        ),
    ],
)
def test_variable_map_order_is_the_random_start_draw_order(layout, first):
    """initialize_encoder draws the layers in the map's order: a reordered map changes every
    seeded model (and every benchmark's random-init score), so the order is pinned."""
    from albert_ray.model.encoder import encoder_for

    assert list(encoder_for(EncoderConfig.from_dict(tiny(layout), layout=layout)).variable_map())[:5] == first
