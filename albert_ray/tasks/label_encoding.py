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


def stitch_windows(
    window_spans: Sequence[list[tuple[int, int, str]]], window_chars: Sequence[tuple[int, int]]
) -> list[tuple[int, int, str]]:
    """Merge spans predicted on overlapping windows into one list of non-overlapping spans.

    Window ``w`` covers characters ``window_chars[w] = (first, last + 1)``. Every span of every
    window is a candidate, scored by how centrally its window saw it: the characters of context
    on its nearer side (a side that is the text's own start or end counts as unlimited). Spans
    are taken from the most central down, skipping any that overlaps one already taken; ties go
    to the longer span, then the earlier one. So an entity cut at one window's edge loses to the
    whole entity in the next window, a span is never output twice, and no two output spans
    overlap. With one window the spans are returned as they are (sorted).
    """
    n = len(window_chars)
    candidates = []
    for w, spans in enumerate(window_spans):
        first, end = window_chars[w]
        for start, stop, label in spans:
            left = float("inf") if w == 0 else start - first
            right = float("inf") if w == n - 1 else end - stop
            candidates.append((-min(left, right), -(stop - start), start, stop, label))
    taken: list[tuple[int, int, str]] = []
    occupied: set[int] = set()
    for _, _, start, stop, label in sorted(set(candidates)):
        if occupied.isdisjoint(range(start, stop)):
            taken.append((start, stop, label))
            occupied.update(range(start, stop))
    return sorted(taken)
