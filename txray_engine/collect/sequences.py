"""From documents to batches: tokenization (Hugging Face or word-level), POS alignment, windows of
at most ``max_length`` tokens, and padded batches with masks.

The sequence of windows is a pure function of the corpus, the tokenizer and ``max_length``; the
resume cursor counts windows ("units").
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import torch

from ..errors import InputError
from ..features.pos import Tagger
from ..features.streams import Batch
from ..features.vocab import Vocabulary
from ..store.format import fingerprint
from .corpus import Document
from .pieces import encoded


class HFTokenizer:
    """A Hugging Face tokenizer (fast tokenizers give offsets for POS alignment)."""

    def __init__(self, tokenizer, special_tokens: bool = False):
        self.tok = tokenizer
        self.special_tokens = bool(special_tokens)  # BOS, [CLS] ... [SEP] around each document
        self.vocab = Vocabulary.from_tokenizer(tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    def encode(self, text: str, offsets: bool = False, special: bool | None = None):
        """Ids (and character offsets) of ``text``, with the special tokens unless ``special``
        is False."""
        if offsets and not getattr(self.tok, "is_fast", False):
            raise InputError("the pos stream needs a fast tokenizer (character offsets); this one "
                             "is slow: use a tokenizer.json model or drop the pos stream")
        enc = self.tok(text, add_special_tokens=self.special_tokens if special is None else special,
                       return_offsets_mapping=offsets)
        return enc["input_ids"], (enc["offset_mapping"] if offsets else None)

    def around(self) -> tuple[list[int], list[int]] | None:
        """The special tokens put before and after a document's own (none without
        ``special_tokens``), or None where a long document cannot be read in pieces: a slow
        tokenizer (no offsets), or special tokens that are not only around the text."""
        if "_around" not in self.__dict__:  # (asked once per document: probed once)
            self._around = self._probe_around()
        return self._around

    def _probe_around(self) -> tuple[list[int], list[int]] | None:
        if not getattr(self.tok, "is_fast", False):
            return None
        if not self.special_tokens:
            return [], []
        probe = "a b"
        plain, full = self.encode(probe, special=False)[0], self.encode(probe)[0]
        for i in range(len(full) - len(plain) + 1):
            if full[i:i + len(plain)] == plain:
                return full[:i], full[i + len(plain):]
        return None

    def identity(self) -> dict:
        return {"kind": "hf", "name": getattr(self.tok, "name_or_path", ""), "size": len(self.vocab),
                "vocabulary": fingerprint(list(self.vocab)), **self._config(),
                **({"special_tokens": True} if self.special_tokens else {})}

    def _config(self) -> dict:
        """A fast tokenizer's whole reading of text (normaliser, pre-tokenizer, merges, special
        tokens), hashed: two tokenizers of one vocabulary can split text apart (cased and
        uncased), and a stage's name for its tokenizer may be a copy's path."""
        backend = getattr(self.tok, "backend_tokenizer", None)
        if backend is None:
            return {}
        config = json.loads(backend.to_str())
        for key in ("truncation", "padding"):  # (set per call, not how text is read)
            config.pop(key, None)
        return {"config": fingerprint(config)}


@functools.lru_cache(maxsize=1)
def word_pattern() -> re.Pattern:
    """Words (letters, digits and the combining marks that belong to them: Hindi's vowel signs,
    a decomposed 'é', with one inner apostrophe, ' or ’) and single other characters but spaces.
    Python's ``\\w`` leaves marks out, which cut 'नमस्ते' into four pieces."""
    marks, start = [], None
    for c in range(0x110001):  # (Unicode's M* categories, as ranges: about 0.2 s, once)
        mark = c < 0x110000 and unicodedata.category(chr(c))[0] == "M"
        if mark and start is None:
            start = c
        elif not mark and start is not None:
            marks.append(f"{re.escape(chr(start))}-{re.escape(chr(c - 1))}")
            start = None
    word = rf"[\w{''.join(marks)}]+"
    return re.compile(rf"{word}(?:['’]{word})?|[^\w\s]")


class WordTokenizer:
    """Word-level tokenizer over a vocabulary file (one token per line).

    Words are runs of letters, digits and their combining marks (:func:`word_pattern`) and
    single other characters; a word is looked up as written, in Unicode's composed form (a
    decomposed 'café' is the vocabulary's 'café'); words missing from the vocabulary map to
    ``<unk>``, which the file must contain.
    """

    def __init__(self, vocab: Vocabulary, lower: bool = False):
        self.vocab = vocab
        self.lower = lower
        self.unk = vocab.get("<unk>")
        if self.unk is None:
            raise InputError("the vocabulary has no '<unk>' entry: add one line '<unk>'")
        self.pad_id = vocab.get("<pad>", 0)

    @classmethod
    def from_file(cls, path, lower: bool = False) -> "WordTokenizer":
        p = Path(path)
        if not p.is_file():
            raise InputError(f"vocabulary file {str(p)!r} does not exist")
        words = [w for w in p.read_text(encoding="utf-8").splitlines() if w]
        return cls(Vocabulary(words), lower)

    def encode(self, text: str, offsets: bool = False, special: bool | None = None):
        ids, offs = [], []
        for m in word_pattern().finditer(text):
            w = m.group().lower() if self.lower else m.group()
            i = self.vocab.get(w)  # as written, else composed
            if i is None and not w.isascii():
                i = self.vocab.get(unicodedata.normalize("NFC", w))
            ids.append(self.unk if i is None else i)
            offs.append(m.span())
        return ids, (offs if offsets else None)

    def around(self) -> tuple[list[int], list[int]]:
        """No special tokens; a long document is read in pieces (see :mod:`.pieces`)."""
        return [], []

    def identity(self) -> dict:
        # the words, not only their count: two words exchanged in the file change every id
        return {"kind": "word", "size": len(self.vocab), "lower": self.lower,
                "vocabulary": fingerprint(list(self.vocab)), "words": "unicode"}


@dataclass
class Unit:
    """One window of one document."""

    ids: list[int]
    pos: list[int] | None
    label: int | None
    last: bool  # the document's final window
    doc: int = 0  # the document's index in the corpus
    start: int = 0  # the window's first token's position in the document
    context: int = 0  # leading tokens that are context only (overlapping windows)


def check_windows(max_length: int, overlap: int = 0) -> None:
    """Refuse a window length below 1, or an overlap that leaves a window nothing to count."""
    if max_length < 1:
        raise InputError(f"max_length must be ≥ 1, got {max_length}")
    if not 0 <= overlap < max_length:
        raise InputError(f"the context overlap must be 0 or more and below the window length "
                         f"({max_length}), got {overlap}")


def windows(docs: Iterable[Document | tuple[int, Document]], tokenizer, max_length: int,
            tagger: Tagger | None = None, labels: Vocabulary | None = None,
            overlap: int = 0) -> Iterator[Unit]:
    """Split every document into windows of at most ``max_length`` tokens. ``docs`` may pair each
    document with its index in the corpus (``enumerate(corpus)``, filtered); else they count
    from 0. With ``overlap`` > 0 each window after a document's first starts ``overlap`` tokens
    before the first token it counts, which it sees as context only: every token is counted
    once, and none but a document's first tokens without left context."""
    check_windows(max_length, overlap)
    for n, doc in enumerate(docs):
        index, doc = doc if isinstance(doc, tuple) else (n, doc)
        label = labels.id(doc.label) if labels is not None else None
        ids: list[int] = []  # the tokens read and not yet left behind, from position `base` on
        pos: list[int] | None = [] if tagger else None
        base = counted = 0  # (counted: the first token not counted yet)

        def cut(final: bool) -> Iterator[Unit]:
            """The windows the tokens read so far hold (with ``final``, all the rest)."""
            nonlocal counted
            total = base + len(ids)
            while counted < total:
                w = max(0, counted - overlap)  # the window's first token
                end = min(w + max_length, total)
                if end == total and not final:  # (more tokens may follow: last or not?)
                    return
                yield Unit(ids[w - base:end - base],
                           pos[w - base:end - base] if pos is not None else None, label,
                           end == total, index, w, counted - w)
                counted = end

        for run_ids, run_pos in encoded(doc.text, tokenizer, tagger):
            ids += run_ids
            if pos is not None:
                pos += run_pos
            yield from cut(final=False)
            drop = max(0, counted - overlap) - base  # tokens no window will hold again
            del ids[:drop]
            if pos is not None:
                del pos[:drop]
            base += drop
        yield from cut(final=True)


class Collated(NamedTuple):
    """One padded batch, the documents it completes, its real tokens, and its last unit (where
    a resume continues after)."""

    batch: Batch
    documents: int
    tokens: int
    last: Unit


def batches(units: Iterable[Unit], batch_size: int, pad_id: int, hf_inputs: bool,
            device="cpu") -> Iterator[Collated]:
    """Padded batches of ``batch_size`` units (see :class:`Collated`)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be ≥ 1, got {batch_size}")
    buf: list[Unit] = []
    for u in units:
        buf.append(u)
        if len(buf) == batch_size:
            yield _collate(buf, pad_id, hf_inputs, device)
            buf = []
    if buf:
        yield _collate(buf, pad_id, hf_inputs, device)


def _collate(units: list[Unit], pad_id: int, hf_inputs: bool, device):
    b, t = len(units), max(len(u.ids) for u in units)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    mask = torch.zeros((b, t), dtype=torch.long)
    pos = torch.full((b, t), -1, dtype=torch.long) if units[0].pos is not None else None
    for i, u in enumerate(units):
        n = len(u.ids)
        ids[i, :n] = torch.tensor(u.ids)
        mask[i, :n] = 1
        if pos is not None:
            pos[i, :n] = torch.tensor(u.pos)
    ids, mask = ids.to(device), mask.to(device)
    features = {"pos": pos.to(device)} if pos is not None else {}
    labels = torch.tensor([u.label for u in units], device=device) \
        if units[0].label is not None else None
    inputs = {"input_ids": ids, "attention_mask": mask} if hf_inputs else ids
    batch = Batch(input_ids=ids, inputs=inputs, mask=mask.bool(), labels=labels,
                  features=features, n_units=b,
                  # on the host: moved to the device only when top examples need them
                  unit_ids=torch.tensor([u.doc for u in units]),
                  offsets=torch.tensor([u.start for u in units]),
                  context=(torch.tensor([u.context for u in units])
                           if any(u.context for u in units) else None))
    return Collated(batch, sum(u.last for u in units),
                    int(mask.sum()) - sum(u.context for u in units), units[-1])

