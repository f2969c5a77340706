import random

import pytest

from albert_ray.tasks.label_encoding import (
    entity_tags,
    multi_hot,
    spans_to_tags,
    stitch_windows,
    tag_error,
    tags_to_spans,
    token_spans_to_char_spans,
)


def random_spans(rng, length, labels=("PER", "LOC", "ORG")):
    spans, i = [], 0
    while i < length:
        if rng.random() < 0.3:
            e = min(length, i + rng.randint(1, 4))
            spans.append((i, e, rng.choice(labels)))
            i = e + rng.randint(0, 2)  # adjacent entities too
        else:
            i += 1
    return spans


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_spans_tags_round_trip(scheme):
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 20)
        spans = random_spans(rng, n)
        tags = spans_to_tags(n, spans, scheme)
        assert tag_error(tags, scheme) is None
        assert tags_to_spans(tags, scheme) == spans


def test_bioes_and_bio_examples():
    assert spans_to_tags(6, [(0, 1, "PER"), (2, 5, "LOC")], "BIOES") == [
        "S-PER",
        "O",
        "B-LOC",
        "I-LOC",
        "E-LOC",
        "O",
    ]
    assert spans_to_tags(4, [(0, 2, "PER"), (2, 4, "PER")], "BIO") == ["B-PER", "I-PER", "B-PER", "I-PER"]
    # lenient decoding of predictions: a stray I- starts an entity, a label change splits
    assert tags_to_spans(["O", "I-PER", "I-PER", "I-LOC", "O"]) == [(1, 3, "PER"), (3, 4, "LOC")]


def test_tag_errors_name_position_and_reason():
    assert tag_error(["O", "I-PER"]) == "position 1: I-PER without a preceding B-PER"
    assert tag_error(["B-LOC", "I-PER"]) == "position 1: I-PER without a preceding B-PER"
    assert tag_error(["B-PER", "I-PER"], "BIOES") == "end of sentence: entity PER is not closed by E-PER"
    assert tag_error(["X-PER"]) == "position 0: tag 'X-PER' is not a BIO tag"
    with pytest.raises(ValueError, match="outside the text of length 3"):
        spans_to_tags(3, [(2, 5, "PER")])
    with pytest.raises(ValueError, match="overlaps"):
        spans_to_tags(5, [(0, 3, "PER"), (2, 4, "LOC")])


def test_entity_tags_and_multi_hot():
    assert entity_tags(["PER", "LOC"], "BIO") == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert len(entity_tags(["A", "B", "C"], "BIOES")) == 13
    assert multi_hot(["b", "a"], ["a", "b", "c"]) == [1, 1, 0]
    with pytest.raises(ValueError, match="label 'z' is not in the label vocabulary"):
        multi_hot(["z"], ["a"])


def test_token_spans_map_to_chars_skipping_specials():
    # "[CLS] 张 三 [SEP]" over text "张 三" (a space at 1)
    assert token_spans_to_char_spans([(0, 3, "PER")], [-1, 0, 2, -1]) == [(0, 3, "PER")]


def test_stitch_windows_no_loss_no_duplicates():
    # two windows over chars [0, 10) and [5, 15); entity (8, 12) is cut in the first window
    w1 = [(1, 3, "A"), (8, 10, "B")]
    w2 = [(8, 12, "B"), (13, 14, "C")]
    assert stitch_windows([w1, w2], [(0, 10), (5, 15)]) == [(1, 3, "A"), (8, 12, "B"), (13, 14, "C")]
    # an entity fully inside the overlap is reported by both windows and kept once
    assert stitch_windows([[(6, 7, "X")], [(6, 7, "X")]], [(0, 10), (5, 15)]) == [(6, 7, "X")]


def _windows(n_chars, body, stride):
    out, s = [], 0
    while True:
        out.append((s, min(n_chars, s + body)))
        if s + body >= n_chars:
            return out
        s += stride


@pytest.mark.parametrize("seed", range(40))
def test_stitched_spans_never_overlap_and_keep_every_entity_seen_whole(seed):
    """Random texts, window sizes and strides; each window reports the gold entities it sees
    whole, the clipped part of those it cuts, and a few spurious spans of its own."""
    import random

    rng = random.Random(seed)
    n = rng.randint(50, 3000)
    body = rng.randint(8, 200)
    stride = rng.randint(max(1, body // 4), body)
    gold, pos = [], 0
    while True:
        pos += rng.randint(1, 30)
        length = rng.randint(1, max(1, min(8, (body - stride) // 2 or 1)))
        if pos + length > n:
            break
        gold.append((pos, pos + length, rng.choice("ABC")))
        pos += length
    windows = _windows(n, body, stride)
    per_window = []
    for first, end in windows:
        spans = [(max(s, first), min(e, end), label) for s, e, label in gold if s < end and e > first]
        for _ in range(rng.randint(0, 2)):  # noise: arbitrary spans, possibly overlapping the gold ones
            s = rng.randrange(first, end)
            spans.append((s, min(end, s + rng.randint(1, 5)), "N"))
        per_window.append(spans)
    out = stitch_windows(per_window, windows)
    covered = [0] * n
    for s, e, _ in out:
        for i in range(s, e):
            covered[i] += 1
    assert max(covered, default=0) <= 1  # no two output spans overlap
    assert len(out) == len(set(out))
    # an entity seen whole, with context, in some window and not overlapped by any noise span survives whole
    noise = [(s, e) for spans in per_window for s, e, label in spans if label == "N"]
    for s, e, label in gold:
        if any(first < s and e < end for first, end in windows) and not any(
            a < e and s < b for a, b in noise
        ):
            assert (s, e, label) in out


def test_one_window_is_returned_as_it_is():
    spans = [(0, 2, "A"), (3, 5, "B"), (9, 10, "A")]
    assert stitch_windows([spans], [(0, 10)]) == spans
