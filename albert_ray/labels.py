"""Pure label functions: entity spans <-> BIO / BIOES tags, label vocabularies, multi-hot.

Spans are ``(start, end, label)`` with ``end`` exclusive, in character offsets of the text.
"""

from __future__ import annotations

from typing import Iterable, Sequence

SCHEMES = ("BIO", "BIOES")


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r}: must be one of {SCHEMES}")
    return scheme


def spans_to_tags(length: int, spans: Iterable[tuple[int, int, str]], scheme: str = "BIO") -> list[str]:
    """Tags for ``length`` positions from non-overlapping spans.

    Raises:
        ValueError: a span is empty, outside ``[0, length)`` or overlaps another.
    """
    check_scheme(scheme)
    tags = ["O"] * length
    for start, end, label in sorted(spans):
        if not 0 <= start < end <= length:
            raise ValueError(f"span ({start}, {end}, {label!r}) is outside the text of length {length}")
        if any(t != "O" for t in tags[start:end]):
            raise ValueError(f"span ({start}, {end}, {label!r}) overlaps another entity")
        if scheme == "BIOES" and end - start == 1:
            tags[start] = f"S-{label}"
            continue
        tags[start] = f"B-{label}"
        for i in range(start + 1, end):
            tags[i] = f"I-{label}"
        if scheme == "BIOES":
            tags[end - 1] = f"E-{label}"
    return tags


def _split(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, _, label = tag.partition("-")
    return prefix, label


def tags_to_spans(tags: Sequence[str], scheme: str = "BIO") -> list[tuple[int, int, str]]:
    """Decode spans leniently, as conlleval / seqeval's default mode do for predictions: an ``I-``
    (or ``E-``) that does not continue an entity of its label starts a new one."""
    check_scheme(scheme)
    spans = []
    start, label = None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, lab = _split(tag)
        continues = start is not None and lab == label and prefix in ("I", "E")
        if not continues and start is not None:
            spans.append((start, i, label))
            start, label = None, None
        if prefix in ("B", "S") or (prefix in ("I", "E") and not continues):
            start, label = i, lab
        if prefix in ("E", "S") and start is not None:
            spans.append((start, i + 1, label))
            start, label = None, None
    return spans


def tag_error(tags: Sequence[str], scheme: str = "BIO") -> str | None:
    """Why a gold tag sequence is malformed (for data validation), or ``None`` if it is fine."""
    check_scheme(scheme)
    allowed = {"O", "B", "I"} | ({"E", "S"} if scheme == "BIOES" else set())
    open_label = None
    for i, tag in enumerate(tags):
        prefix, label = _split(tag)
        if prefix not in allowed or (prefix != "O" and not label):
            return f"position {i}: tag {tag!r} is not a {scheme} tag"
        if prefix in ("I", "E") and open_label != label:
            return f"position {i}: {tag} without a preceding B-{label}"
        if scheme == "BIOES" and open_label is not None and prefix not in ("I", "E"):
            return f"position {i}: entity {open_label} opened by B- is not closed by E-{open_label}"
        open_label = label if prefix in ("B", "I") else None
    if scheme == "BIOES" and open_label is not None:
        return f"end of sentence: entity {open_label} is not closed by E-{open_label}"
    return None


def entity_tags(labels: Iterable[str], scheme: str = "BIO") -> list[str]:
    """Tag vocabulary for entity types: ``O`` first, then each label's tags, sorted by label."""
    check_scheme(scheme)
    prefixes = "BI" if scheme == "BIO" else "BIES"
    return ["O"] + [f"{p}-{label}" for label in sorted(set(labels)) for p in prefixes]


def token_spans_to_char_spans(spans, char_index: Sequence[int]) -> list[tuple[int, int, str]]:
    """Map spans over token positions onto character offsets through a token -> char map
    (``-1`` for special tokens, which never belong to an entity)."""
    out = []
    for s, e, label in spans:
        chars = [char_index[i] for i in range(s, e) if char_index[i] >= 0]
        if chars:
            out.append((chars[0], chars[-1] + 1, label))
    return out


def multi_hot(labels: Iterable[str], vocab: Sequence[str]) -> list[int]:
    """Indicator vector over ``vocab``.

    Raises:
        ValueError: a label is not in the vocabulary.
    """
    index = {label: i for i, label in enumerate(vocab)}
    out = [0] * len(vocab)
    for label in labels:
        if label not in index:
            raise ValueError(f"label {label!r} is not in the label vocabulary ({len(vocab)} labels)")
        out[index[label]] = 1
    return out


def stitch_windows(window_spans: Sequence[list[tuple[int, int, str]]],
                   window_chars: Sequence[tuple[int, int]]) -> list[tuple[int, int, str]]:
    """Merge spans predicted on overlapping windows into one list without losses or duplicates.

    Window ``w`` covers characters ``window_chars[w] = (first, last + 1)``.  Each window owns the
    characters from the middle of its overlap with the previous window to the middle of its
    overlap with the next one; a span is kept from the window that owns its start.  With the
    default half-window stride every entity shorter than a quarter window is seen whole there.
    """
    n = len(window_chars)
    out = []
    for w, spans in enumerate(window_spans):
        lo = 0 if w == 0 else (window_chars[w][0] + window_chars[w - 1][1]) // 2
        hi = float("inf") if w == n - 1 else (window_chars[w + 1][0] + window_chars[w][1]) // 2
        for span in spans:
            if not lo <= span[0] < hi:
                continue
            if w < n - 1 and span[1] >= window_chars[w][1]:
                # touches this window's right edge, so it may be cut: the next window sees more of it
                whole = [t for t in window_spans[w + 1] if t[0] == span[0]]
                if whole:
                    span = whole[0]
            out.append(span)
    return sorted(set(out))
