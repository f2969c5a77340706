from albert_ray.model.tokenization import CharTokenizer, Vocab

TOKENS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "张",
    "三",
    "在",
    "北",
    "京",
    "a",
    "i",
    "1",
    "2",
    "，",
    "“",
    "”",
    "!",
]


def tok():
    return CharTokenizer(Vocab(TOKENS))


def test_offsets_on_mixed_text_map_back_exactly():
    text = "张三 在AI北京，“1２”😀!"
    enc = tok().encode(text)
    ids = dict(zip(TOKENS, range(len(TOKENS))))
    # every non-space character is one token, in order; whitespace is skipped but keeps its offset
    assert [text[i] for i in enc.char_index[1:-1]] == [c for c in text if not c.isspace()]
    assert enc.char_index[0] == enc.char_index[-1] == -1
    assert enc.token_ids[0] == ids["[CLS]"] and enc.token_ids[-1] == ids["[SEP]"]
    by_char = {text[i]: t for i, t in zip(enc.char_index[1:-1], enc.token_ids[1:-1])}
    assert by_char["A"] == ids["a"] and by_char["I"] == ids["i"]  # lower-cased
    assert by_char["２"] == ids["2"]  # full-width digit via NFKC
    assert by_char["😀"] == ids["[UNK]"]
    assert by_char["“"] == ids["“"]


def test_windows_cover_every_char_with_overlap():
    text = "张三在北京" * 20  # 100 chars
    wins = tok().windows(text, max_len=22, stride=10)
    covered = sorted({i for w in wins for i in w.char_index if i >= 0})
    assert covered == list(range(100))
    assert all(len(w.token_ids) <= 22 for w in wins)
    assert wins[1].char_index[1] == 10
    assert len(tok().windows("张三", max_len=22)) == 1


def test_char_vocab_normalises_like_the_tokenizer():
    from albert_ray.model.tokenization import CharTokenizer, build_char_vocab

    vocab = build_char_vocab(["Ａb 张张", "B"])
    assert vocab.tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert vocab.tokens[5:] == ["b", "张", "a"]
    # every character of the texts the vocabulary was built from has its own id
    assert CharTokenizer(vocab).encode("Ａb 张B").token_ids == [2, 7, 5, 6, 5, 3]
