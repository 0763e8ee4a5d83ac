"""Part-of-speech tags as a feature stream: the Penn Treebank tag set, an offline tagger, and the
alignment of word tags to the model's (sub)word tokens by character offsets."""

from __future__ import annotations

import bisect
from typing import Callable, Sequence

from ..errors import InputError
from .vocab import Vocabulary

#: Penn Treebank tags (with punctuation tags) plus ``X`` for anything else a tagger emits.
PTB_TAGS = ("CC CD DT EX FW IN JJ JJR JJS LS MD NN NNS NNP NNPS PDT POS PRP PRP$ RB RBR RBS RP SYM "
            "TO UH VB VBD VBG VBN VBP VBZ WDT WP WP$ WRB . , : ( ) `` '' \" # $ -LRB- -RRB- X").split()

POS_VOCAB = Vocabulary(PTB_TAGS)

Tagger = Callable[[str], Sequence[tuple[str, str]]]


def pattern_tagger() -> Tagger:
    """textblob's PatternTagger (offline, MIT, Penn Treebank tags)."""
    try:
        from textblob.en.taggers import PatternTagger
    except ImportError:
        raise InputError("the pos stream needs textblob: pip install 'txray_engine[pos]' "
                         "(or pip install textblob)") from None
    tagger = PatternTagger()
    return lambda text: tagger.tag(text)


def word_spans(text: str, tagged: Sequence[tuple[str, str]]) -> tuple[list[int], list[int], list[str]]:
    """Character spans of the tagged words in ``text`` (words not found in order are dropped)."""
    starts, ends, tags = [], [], []
    pos = 0
    for word, tag in tagged:
        i = text.find(word, pos)
        if i < 0:
            continue
        starts.append(i)
        ends.append(i + len(word))
        tags.append(tag)
        pos = i + len(word)
    return starts, ends, tags


def align_tags(text: str, offsets: Sequence[tuple[int, int]], tagged: Sequence[tuple[str, str]],
               vocab: Vocabulary = POS_VOCAB) -> list[int]:
    """One tag id per token: the tag of the word containing the token's first non-space
    character; ``-1`` (missing) for tokens outside every tagged word (special tokens, spaces)."""
    starts, ends, tags = word_spans(text, tagged)
    other = vocab.id("X")
    ids = []
    for s, e in offsets:
        while s < e and text[s].isspace():
            s += 1
        j = bisect.bisect_right(starts, s) - 1
        if s < e and j >= 0 and s < ends[j]:
            ids.append(vocab.get(tags[j], other))
        else:
            ids.append(-1)
    return ids
