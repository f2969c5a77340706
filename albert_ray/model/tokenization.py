"""Character-level tokenization with exact char <-> token offsets.

As in the reference recipe, every character is one token (the brightmart vocab is Chinese
characters plus lower-case single Latin letters and digits).  Unlike it, whitespace produces no
token but keeps its place in the offsets, and every token remembers the character it came from,
so spans predicted over tokens map back onto the original text exactly.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from albert_ray.paths import not_found

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"


@dataclass(frozen=True)
class Encoding:
    """A tokenized text (or window of it).

    Attributes:
        token_ids: ``[CLS] t1 ... tn [SEP]`` ids.
        char_index: for each token, the index of its character in the original text; -1 for
            ``[CLS]`` / ``[SEP]``.
    """

    token_ids: list[int]
    char_index: list[int]


class Vocab:
    """A ``vocab.txt`` (one token per line, line number = id)."""

    def __init__(self, tokens: list[str]):
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        for special in (PAD, UNK, CLS, SEP):
            if special not in self.index:
                raise ValueError(f"vocab has no {special} token; is this a BERT / ALBERT vocab.txt?")
        if self.index[PAD] != 0:
            raise ValueError(f"{PAD} must have id 0 (the encoder masks id 0), it has id {self.index[PAD]}")

    @classmethod
    def from_file(cls, path: str | Path) -> "Vocab":
        path = Path(path)
        if not path.is_file():
            raise not_found("vocab file", path)
        with path.open(encoding="utf-8") as f:
            tokens = [line.rstrip("\n").rstrip("\r") for line in f]
        try:
            return cls(tokens)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def __len__(self) -> int:
        return len(self.tokens)

    def save(self, path: str | Path) -> None:
        Path(path).write_text("\n".join(self.tokens) + "\n", encoding="utf-8")

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return self.index[UNK]

    @property
    def cls_id(self) -> int:
        return self.index[CLS]

    @property
    def sep_id(self) -> int:
        return self.index[SEP]


def is_token_char(ch: str) -> bool:
    """Whether a character becomes a token: not whitespace, and not a control, format or
    surrogate code point (NUL, a BOM or zero-width space, the lone half of a truncated emoji).
    Those keep their place in the offsets but are never tokens, so they are never labeled —
    as BERT's own tokenizer drops them in ``_clean_text``."""
    return not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf", "Cs")


def canonical_char(ch: str) -> str:
    """The vocabulary form of a character: NFKC lower-cased when that is one character
    (full-width ``Ａ`` -> ``a``), else lower-cased. :class:`CharTokenizer` finds every character
    under this form, so a vocabulary built from it covers its texts."""
    norm = unicodedata.normalize("NFKC", ch).lower()
    return norm if len(norm) == 1 else ch.lower()


def build_char_vocab(texts: Iterable[str]) -> Vocab:
    """A character vocabulary for training from scratch (``model.vocab: auto``): the special
    tokens, then the canonical form of every non-whitespace character, most frequent first."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(canonical_char(ch) for ch in text if is_token_char(ch))
    special = (PAD, UNK, CLS, SEP, MASK)
    chars = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c not in special]
    return Vocab(list(special) + chars)


class CharTokenizer:
    """One token per character that :func:`is_token_char` accepts.

    Lookup order for a character: as is, lower-cased (the vocab is lower-case only), then its
    NFKC form lower-cased (full-width ``Ａ`` -> ``a``, ``１`` -> ``1``), else ``[UNK]``.
    """

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._cache: dict[str, int] = {}

    def char_id(self, ch: str) -> int:
        cached = self._cache.get(ch)
        if cached is not None:
            return cached
        index = self.vocab.index
        token_id = index.get(ch)
        if token_id is None:
            token_id = index.get(ch.lower())
        if token_id is None:
            token_id = index.get(canonical_char(ch))
        if token_id is None or token_id == 0:
            token_id = self.vocab.unk_id
        self._cache[ch] = token_id
        return token_id

    def token_chars(self, text: str) -> list[int]:
        """Indices of the characters of ``text`` that become tokens (whitespace is skipped)."""
        return [i for i, ch in enumerate(text) if is_token_char(ch)]

    def encode(self, text: str, start: int = 0, end: int | None = None) -> Encoding:
        """Tokenize the characters ``text[start:end]`` (char indices stay those of ``text``)."""
        end = len(text) if end is None else end
        return self._from_chars(text, [i for i in range(start, end) if is_token_char(text[i])])

    def windows(self, text: str, max_len: int, stride: int | None = None) -> list[Encoding]:
        """Split ``text`` into encodings of at most ``max_len`` tokens (special tokens included).

        Consecutive windows overlap by ``max_len - 2 - stride`` characters so an entity that
        crosses one window's border lies whole inside the next; ``stride`` defaults to half the
        window.
        """
        body = max_len - 2
        if body < 1:
            raise ValueError(f"max_len={max_len} leaves no room for text between [CLS] and [SEP]")
        stride = stride or max(1, body // 2)
        if not 0 < stride <= body:
            raise ValueError(f"stride={stride} must be in [1, {body}] for max_len={max_len}")
        chars = self.token_chars(text)
        if len(chars) <= body:
            return [self._from_chars(text, chars)]
        out = []
        for s in range(0, len(chars), stride):
            out.append(self._from_chars(text, chars[s : s + body]))
            if s + body >= len(chars):
                break
        return out

    def _from_chars(self, text: str, chars: list[int]) -> Encoding:
        ids = [self.vocab.cls_id] + [self.char_id(text[i]) for i in chars] + [self.vocab.sep_id]
        return Encoding(token_ids=ids, char_index=[-1] + list(chars) + [-1])
