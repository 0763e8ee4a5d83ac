"""``Vocabulary``: the id ↔ string map of one feature stream, stored with the results."""

from __future__ import annotations

from typing import Iterable, Sequence

from ..errors import InputError
from .text import TEXT_KINDS, context, shown, tokenizer_text


class Vocabulary:
    """Feature strings indexed by id ``0 .. len - 1``.

    Strings must be unique so that stages with different vocabularies can be aligned by string.
    ``text`` says how they read (:mod:`.text`): ``None``, ``"metaspace"`` (SentencePiece),
    ``"wordpiece"``, or ``"byte_level"`` for a byte-level
    BPE tokenizer's tokens (``'Ġthe'`` reads ``' the'``); it changes only how they are shown.
    """

    text: str | None = None  # (a Vocabulary pickled before it existed reads as None)

    def __init__(self, items: Iterable[str], text: str | None = None):
        if text not in TEXT_KINDS:
            raise InputError(f"unknown vocabulary text {text!r}; use one of {TEXT_KINDS}")
        if isinstance(items, (str, bytes)):  # (its characters would become the features)
            raise InputError(f"a vocabulary is a list of feature strings, got the string "
                             f"{items[:20]!r}: pass [{items[:20]!r}, ...]")
        if not isinstance(items, Iterable):
            raise InputError(f"a vocabulary is a list of feature strings, got "
                             f"{type(items).__name__}")
        self.text = text
        self.items: list[str] = [str(s) for s in items]
        self._index = {s: i for i, s in enumerate(self.items)}
        if len(self._index) != len(self.items):
            seen, dup = set(), []
            for s in self.items:
                if s in seen:
                    dup.append(s)
                seen.add(s)
            raise InputError(f"vocabulary strings must be unique; repeated: {dup[:5]}")
        if not self.items:
            raise InputError("a vocabulary needs at least one entry")

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "Vocabulary":
        """Vocabulary of a Hugging Face tokenizer (ids without a string get ``<id:N>``), with the
        tokenizer's spelling (``text="byte_level"`` for byte-level BPE, see
        :func:`~.text.tokenizer_text`)."""
        size = len(tokenizer)
        inv = {i: t for t, i in tokenizer.get_vocab().items()}
        return cls((inv.get(i, f"<id:{i}>") for i in range(size)), tokenizer_text(tokenizer))

    @classmethod
    def of_size(cls, n: int, prefix: str = "") -> "Vocabulary":
        """Ids ``0 .. n-1`` named by their number (features with no natural names)."""
        return cls(f"{prefix}{i}" for i in range(n))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> str:
        return self.items[i]

    def __iter__(self):
        return iter(self.items)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.items == other.items

    def shown(self, s: str) -> str:
        """A feature string as it reads (``'Ġthe'`` → ``' the'`` for byte-level tokens)."""
        return shown(s, self.text)

    def context(self, before, mid: str, after) -> tuple[str, str, str]:
        """A token between its neighbours as three texts (before, token, after)."""
        return context(before, mid, after, self.text)

    def window(self, ids) -> tuple[str, str, str]:
        """A top example's context window (token ids, ``-1`` outside the text; the position in
        the middle) as three texts: before, the token, after."""
        ids = [int(t) for t in ids]
        mid = len(ids) // 2
        before, after = ([self.items[t] for t in part if t >= 0]
                         for part in (ids[:mid], ids[mid + 1:]))
        word = self.items[ids[mid]] if ids[mid] >= 0 else ""
        return self.context(before, word, after)

    def id(self, s: str) -> int:
        """Id of a string (``KeyError`` if absent)."""
        return self._index[s]

    def get(self, s: str, default: int | None = None) -> int | None:
        return self._index.get(s, default)

    def encode(self, strings: Sequence[str], unknown: int | None = None) -> list[int]:
        """Ids of ``strings``; absent strings map to ``unknown`` (error if ``None``)."""
        out = []
        for s in strings:
            i = self._index.get(s, unknown)
            if i is None:
                raise KeyError(f"{s!r} is not in the vocabulary")
            out.append(i)
        return out

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self.items[:4])
        text = f", text={self.text!r}" if self.text else ""
        return f"Vocabulary({len(self)}: {head}{', …' if len(self) > 4 else ''}{text})"
