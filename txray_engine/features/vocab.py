"""``Vocabulary``: the id ↔ string map of one feature stream, stored with the results."""

from __future__ import annotations

from typing import Iterable, Sequence

from ..errors import InputError


class Vocabulary:
    """Feature strings indexed by id ``0 .. len - 1``.

    Strings must be unique so that stages with different vocabularies can be aligned by string.
    """

    def __init__(self, items: Iterable[str]):
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
        """Vocabulary of a Hugging Face tokenizer (ids without a string get ``<id:N>``)."""
        size = len(tokenizer)
        inv = {i: t for t, i in tokenizer.get_vocab().items()}
        return cls(inv.get(i, f"<id:{i}>") for i in range(size))

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
        return f"Vocabulary({len(self)}: {head}{', …' if len(self) > 4 else ''})"
