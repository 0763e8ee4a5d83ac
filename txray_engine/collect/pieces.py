"""Long documents a piece at a time: tokenised and tagged in overlapping pieces of text, so that a
document of any length holds the tokens of one piece at once, not of the whole (a 3 MB line took
600 MiB whole, with its tags).

Two consecutive pieces share :data:`OVERLAP` characters. Where they agree on the tokens (or the
tagged words) inside that overlap, away from both pieces' ends, the first piece's are kept before a
point in the agreement, at a space, and the next piece's from it on. Tokenizers and taggers split
text by local rules (a word and its space, a sentence), so away from a piece's ends a piece reads
as the whole document does: the tokens are the whole document's, id for id (SmolLM2's tokenizer
and the POS tagger on 3 MB of Wikipedia, and thousands of random texts through byte-level BPE,
WordPiece and Metaspace tokenizers). Where the two pieces do not agree (a word longer than the
overlap), the first piece doubles and they are compared again: a word is never cut where a piece
happened to end. Text with few spaces (Chinese, Japanese, base64) is read whole, as are documents
up to :data:`PIECE` characters.

Not exact by construction: a tagger whose tag for a word depends on text further back than an
overlap (the POS tagger reads a sentence), and a tokenizer whose reading of a word of more than
an overlap's length depends on where it starts (a Unigram model's ties).
"""

from __future__ import annotations

from itertools import chain
from typing import Callable, Iterator, Sequence

from ..features.pos import POS_VOCAB, Tagger, TagAligner, align_tags, word_spans

#: Characters of a long document read at a time (documents up to this are read whole).
PIECE = 1 << 15
#: Characters two consecutive pieces share (where they must agree).
OVERLAP = 1 << 11

Item = tuple  # (start, end, value): a token or a tagged word at absolute character offsets
Segment = Callable[[int, int], Sequence[Item]]


def stitched(text: str, segment: Segment, piece: int | None = None,
             overlap: int | None = None) -> Iterator[list[Item]]:
    """The items of ``text`` in runs, each item once and in order, from ``segment(a, b)`` (the
    items of ``text[a:b]`` at absolute offsets, sorted by start) over overlapping pieces (by
    default of :data:`PIECE` and :data:`OVERLAP` characters)."""
    piece, overlap = piece or PIECE, overlap or OVERLAP
    if not 0 < 4 * overlap <= piece:
        raise ValueError(f"a piece ({piece}) must be at least 4 overlaps ({overlap})")
    n = len(text)
    a, b = 0, min(piece, n)
    if text.count(" ", 0, n) * overlap < n:  # (on average fewer than one space an overlap:
        b = n  # its pieces would not agree, and read whole at last, after longer and longer)
    current = segment(a, b)
    done = 0  # where the items not given yet start (a point both pieces agreed on)
    while b < n:
        a2 = b - overlap
        b2 = min(a2 + piece, n)
        following = segment(a2, b2)
        p = _agreement(text, current, following, a2 + overlap // 4, b - overlap // 4)
        if p is None:  # no agreement: read the current piece twice as long and try again
            b = a + 2 * (b - a)
            b = n if 2 * (b - a) >= n - a else b  # (or the rest, when that is near)
            current = segment(a, b)
            continue
        yield [it for it in current if done <= it[0] < p]
        done, a, b, current = p, a2, b2, following
    yield [it for it in current if it[0] >= done]


def _agreement(text: str, current: Sequence[Item], following: Sequence[Item], lo: int,
               hi: int) -> int | None:
    """Where to pass from ``current``'s items to ``following``'s: the start of an item after a
    space in the run of items both hold the same from there up to ``hi``, or None when that run
    does not reach back to the middle of ``[lo, hi)`` (the two read the text differently there)
    or has no such item. (Only after a space: inside a word a tokenizer's reading may depend on
    the whole word, such as WordPiece's unknown word.)"""
    a = [it for it in current if lo <= it[0] < hi]
    b = [it for it in following if lo <= it[0] < hi]
    k = 0
    while k < min(len(a), len(b)) and a[-1 - k] == b[-1 - k]:
        k += 1
    run = a[len(a) - k:]
    if not run or run[0][0] > (lo + hi) // 2:
        return None
    for p in (it[0] for it in run[1:]):  # (an agreed item comes before it)
        if text[p - 1] == " " or text[p] == " ":  # (a space every tokenizer splits at: not
            return p  # a newline inside a Metaspace word, not '\x1c', which Python calls one)
    return None


def encoded(text: str, tokenizer, tagger: Tagger | None = None, piece: int | None = None,
            overlap: int | None = None) -> Iterator[tuple[list[int], list[int] | None]]:
    """A document's token ids, and with ``tagger`` their POS tag ids (:func:`align_tags`), in
    runs whose concatenation is the whole document's: one run for a document of at most
    ``piece`` characters or a tokenizer that cannot be read in pieces (no character offsets, or
    special tokens it does not only put around the text)."""
    if len(text) <= (piece or PIECE) or not hasattr(tokenizer, "around") or \
            tokenizer.around() is None:
        ids, offsets = tokenizer.encode(text, offsets=tagger is not None)
        yield ids, (align_tags(text, offsets, tagger(text), POS_VOCAB) if tagger else None)
        return
    prefix, suffix = tokenizer.around()

    def tokens(a: int, b: int) -> list[Item]:
        ids, offsets = tokenizer.encode(text[a:b], offsets=True, special=False)
        return [(s + a, e + a, i) for i, (s, e) in zip(ids, offsets)]

    def words(a: int, b: int) -> list[Item]:
        starts, ends, tags = word_spans(text[a:b], tagger(text[a:b]))
        return [(s + a, e + a, t) for s, e, t in zip(starts, ends, tags)]

    align = TagAligner(text, chain.from_iterable(stitched(text, words, piece, overlap)),
                       POS_VOCAB) if tagger else None
    if prefix:
        yield prefix, ([-1] * len(prefix) if tagger else None)
    for run in stitched(text, tokens, piece, overlap):
        yield [i for _, _, i in run], (align([it[:2] for it in run]) if align else None)
    if suffix:
        yield suffix, ([-1] * len(suffix) if tagger else None)
