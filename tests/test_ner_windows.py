"""Long texts: an entity across a window border in a 1,000-character text is found once."""

import numpy as np
import pytest

from albert_ray.model.tokenization import CharTokenizer, Vocab
from albert_ray.spec import ModelSpec
from albert_ray.tasks.label_encoding import entity_tags
from albert_ray.tasks.registry import NerTask, build_task_model

ENCODER = dict(
    vocab_size=10,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=16,
    embedding_size=8,
    max_position_embeddings=128,
    type_vocab_size=2,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    ln_type="postln",
    layout="albert_brightmart",
)


def test_entity_across_window_border_found_once_with_exact_offsets():
    text = "".join("今天天气很好我们出去走走" for _ in range(84))[:1000]
    entities = {(124, 128, "PER"), (90, 93, "LOC"), (600, 602, "PER"), (995, 1000, "LOC")}
    text = list(text)
    for s, e, _ in entities:
        text[s:e] = "欧阳建国华"[: e - s]
    text = "".join(text)
    spec = ModelSpec(task="ner", labels=("LOC", "PER"), encoder=ENCODER, max_len=128, dropout=0.0)
    tags = entity_tags(spec.labels, "BIO")
    model = build_task_model(spec)
    crf = model.get_layer("CRF")
    crf.transitions.assign(np.zeros_like(crf.transitions.numpy()))
    tok = CharTokenizer(Vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    windows = NerTask().windows(tok, text, spec)
    assert len(windows) == 15 and windows[1].char_index[1] == 63  # half-window stride
    gold_tag = {}
    for s, e, label in entities:
        for i in range(s, e):
            gold_tag[i] = tags.index(("B-" if i == s else "I-") + label)
    outputs = []
    for w in windows:  # emissions that spell out exactly the gold tags visible in each window
        em = np.zeros((len(w.token_ids), len(tags)))
        for t, c in enumerate(w.char_index):
            em[t, gold_tag.get(c, 0)] = 10.0
        outputs.append(em)
    # window 0 sees only "欧阳" of the entity at 124..128: it must not leak a truncated span
    result = NerTask().decode(text, windows, outputs, spec, model)
    found = [(x["start"], x["end"], x["label"]) for x in result["entities"]]
    assert sorted(found) == sorted(entities)
    assert all(text[x["start"] : x["end"]] == x["text"] for x in result["entities"])
    assert all(x["score"] > 0.99 for x in result["entities"])


def test_trained_model_on_a_long_text_gives_no_overlapping_entities():
    """The old sample model (48-token windows) over 3,000+ characters: 74 windows."""
    import json
    from pathlib import Path

    from albert_ray.inference.labeler import Labeler

    model = Path(__file__).parent / "data" / "model_before_mixed_precision"
    texts = json.loads((model / "expected_predictions.json").read_text(encoding="utf-8"))["texts"]
    labeler = Labeler.from_dir(model)
    long_text = "".join(texts * 40)
    assert len(labeler.task.windows(labeler.tokenizer, long_text, labeler.spec)) == 74  # 23-character stride
    entities = labeler.predict([long_text])[0]["entities"]
    spans = sorted((e["start"], e["end"]) for e in entities)
    assert len(spans) > 40
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert all(long_text[e["start"] : e["end"]] == e["text"] for e in entities)
    # a text that fits one window: the same entities alone as at the start of the long text
    alone = labeler.predict([texts[0]])[0]["entities"]
    assert alone and all(e["end"] <= len(texts[0]) for e in alone)


def test_a_span_of_cls_alone_is_dropped_without_shifting_the_next_entities_scores():
    """[CLS] tagged B-LOC (a span with no characters), then a weak PER and a confident LOC: each
    entity keeps its own score (they were zipped out of step, giving PER the [CLS] span's)."""
    spec = ModelSpec(task="ner", labels=("LOC", "PER"), encoder=ENCODER, max_len=128, dropout=0.0)
    tags = entity_tags(spec.labels, "BIO")  # O B-LOC I-LOC B-PER I-PER
    model = build_task_model(spec)
    crf = model.get_layer("CRF")
    for v in (crf.transitions, crf.start, crf.end):
        v.assign(np.zeros_like(v.numpy()))
    tok = CharTokenizer(Vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    windows = NerTask().windows(tok, "甲乙", spec)
    em = np.zeros((4, len(tags)))
    em[0, tags.index("B-LOC")] = 10.0  # [CLS]
    em[1, tags.index("B-PER")] = 0.5  # 甲: a weak PER
    em[2, tags.index("B-LOC")] = 10.0  # 乙: a confident LOC
    em[3, tags.index("O")] = 10.0  # [SEP]
    result = NerTask().decode("甲乙", windows, [em], spec, model)
    got = {(e["start"], e["end"], e["label"]): e["score"] for e in result["entities"]}
    assert list(got) == [(0, 1, "PER"), (1, 2, "LOC")]
    weak = np.exp(0.5) / (np.exp(0.5) + 4)  # its marginal: one tag at 0.5 against four at 0
    assert got[(0, 1, "PER")] == pytest.approx(weak, abs=1e-6)
    assert got[(1, 2, "LOC")] > 0.999
