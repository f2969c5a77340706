import json

import pytest

from albert_ray.io.training_files import DataError, read_examples


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_bio_reader_spans_and_errors(tmp_path):
    p = write(tmp_path, "a.bio", "张 B-PER\n三 I-PER\n在 O\n北 B-LOC\n京 I-LOC\n\n好 O\n\n")
    res = read_examples(p)
    assert [(e.text, e.spans) for e in res.examples] == [
        ("张三在北京", ((0, 2, "PER"), (3, 5, "LOC"))),
        ("好", ()),
    ]
    bad = write(tmp_path, "b.bio", "张 B-PER\n\n三 I-PER\n在 O\n\nB-LOC\n\n好 O\n")
    with pytest.raises(
        DataError, match=r"b.bio:3: sentence starting here: position 0: I-PER without a preceding B-PER"
    ):
        read_examples(bad)
    res = read_examples(bad, on_bad_records="skip")
    assert [e.text for e in res.examples] == ["张", "好"]
    assert [r for _, r in res.skipped][1].startswith("expected 'char tag', got a tag without a character")
    assert res.skipped[1][0].endswith("b.bio:6")


def test_csv_reader_multiclass_multilabel_and_bad_rows(tmp_path):
    p = write(tmp_path, "a.csv", 'label,content\n体育,比赛\n"a|b",文本\n体育,\nx,y,z\n')
    with pytest.raises(DataError, match="a.csv:4: empty text"):
        read_examples(p)
    res = read_examples(p, on_bad_records="skip", multilabel=True)
    assert [e.labels for e in res.examples] == [("体育",), ("a", "b")]
    assert [(w.rsplit(":", 1)[1], r) for w, r in res.skipped] == [
        ("4", "empty text"),
        ("5", "expected 2 columns (label,content), got 3"),
    ]


def test_cluener_and_generic_jsonl(tmp_path):
    good = {
        "text": "浙商银行叶老桂",
        "label": {"company": {"浙商银行": [[0, 3]]}, "name": {"叶老桂": [[4, 6]]}},
    }
    wrong = {"text": "浙商银行", "label": {"company": {"浙商": [[1, 2]]}}}
    p = write(
        tmp_path,
        "c.json",
        json.dumps(good, ensure_ascii=False) + "\n" + json.dumps(wrong, ensure_ascii=False) + "\n",
    )
    res = read_examples(p, on_bad_records="skip")
    assert res.examples[0].spans == ((0, 4, "company"), (4, 7, "name"))
    assert res.skipped == [(f"{p}:2", "span [1, 2] is '商银' in the text, not '浙商'")]
    rows = [
        {"text": "张三", "entities": [{"start": 0, "end": 2, "label": "PER", "text": "张三"}]},
        {"text": "张三", "entities": [{"start": 1, "end": 5, "label": "PER"}]},
        {"text": "", "label": "x"},
        {"text": "好", "labels": ["b", "a"]},
        {"txt": "x"},
    ]
    p = write(tmp_path, "g.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    res = read_examples(p, on_bad_records="skip")
    assert [e.spans or e.labels for e in res.examples] == [((0, 2, "PER"),), ("a", "b")]
    assert [r for _, r in res.skipped] == [
        "span (1, 5, 'PER') is outside the text of length 2",
        "empty text",
        "missing or non-string field 'text'",
    ]
