"""Part-of-speech tags as a feature stream: the Penn Treebank tag set, an offline tagger, and the
alignment of word tags to the model's (sub)word tokens by character offsets."""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Iterable, Sequence

from ..errors import InputError
from .vocab import Vocabulary

#: Penn Treebank tags (with punctuation tags) plus ``X`` for anything else a tagger emits.
PTB_TAGS = ("CC CD DT EX FW IN JJ JJR JJS LS MD NN NNS NNP NNPS PDT POS PRP PRP$ RB RBR RBS RP SYM "
            "TO UH VB VBD VBG VBN VBP VBZ WDT WP WP$ WRB . , : ( ) `` '' \" # $ -LRB- -RRB- X").split()

POS_VOCAB = Vocabulary(PTB_TAGS)

Tagger = Callable[[str], Sequence[tuple[str, str | None]]]  # (None: no tag for the word)


def pattern_tagger() -> Tagger:
    """textblob's PatternTagger (offline, MIT, Penn Treebank tags)."""
    try:
        from textblob.en.taggers import PatternTagger
    except ImportError:
        raise InputError("the pos stream needs textblob: pip install 'txray_engine[pos]' "
                         "(or pip install textblob)") from None
    tagger = PatternTagger()
    return lambda text: [(w, t if english(w) else None) for w, t in tagger.tag(text)]


def english(word: str) -> bool:
    """Whether an English tagger's tag of ``word`` means something: not for words whose letters
    are all of other scripts (pattern tags Chinese, Arabic or Thai words 'NN') nor for emoji
    and other symbols; their tokens are left without a tag (missing)."""
    if word.isascii():
        return True
    letters = [c for c in word if c.isalpha()]
    if letters:
        return any(unicodedata.name(c, "").startswith("LATIN") for c in letters)
    return not any(unicodedata.category(c) == "So" for c in word)


#: Characters, besides spaces, a tagged word may be found past the end of the word before it.
SLACK = 8
_SPACES = re.compile(r"\s*")


def word_spans(text: str, tagged: Sequence[tuple[str, str]]) -> tuple[list[int], list[int], list[str]]:
    """Character spans of the tagged words in ``text``, each found right after the one before
    (past spaces and at most :data:`SLACK` other characters). A word the tagger spelled without
    the spaces the text has inside it (pattern reads ``':    D'`` as the emoticon ``':D'``) is
    found with them; one spelled otherwise is dropped, and the next word is looked for further
    on, as far as the dropped one could have reached. Searched for anywhere further on, such a
    word was found thousands of characters later, and every word in between went untagged."""
    starts, ends, tags = [], [], []
    pos, reach = 0, SLACK
    for word, tag in tagged:
        if not word:
            continue
        at = _SPACES.match(text, pos).end()
        i = text.find(word, at, at + len(word) + reach)
        end = i + len(word)
        if i < 0:
            spaced = re.compile(r"\s*".join(map(re.escape, word))).match(text, at)
            if spaced is None:
                reach += len(word) + SLACK  # (what the dropped word may have spanned)
                continue
            i, end = spaced.span()
        starts.append(i)
        ends.append(end)
        tags.append(tag)
        pos, reach = end, SLACK
    return starts, ends, tags


def align_tags(text: str, offsets: Sequence[tuple[int, int]], tagged: Sequence[tuple[str, str]],
               vocab: Vocabulary = POS_VOCAB) -> list[int]:
    """One tag id per token: the tag of the word containing the token's first non-space
    character; ``-1`` (missing) for tokens outside every tagged word (special tokens, spaces)."""
    return TagAligner(text, zip(*word_spans(text, tagged)), vocab)(offsets)


class TagAligner:
    """:func:`align_tags` over a stream: ``words`` are the tagged words' ``(start, end, tag)``
    in text order, read only as far as the tokens given so far reach, so that a long document's
    tags and tokens can come a piece at a time. Calls give the tokens' offsets in text order."""

    def __init__(self, text: str, words: Iterable[tuple[int, int, str]],
                 vocab: Vocabulary = POS_VOCAB):
        self.text, self.words, self.vocab = text, iter(words), vocab
        self.other = vocab.id("X")
        self.word = None  # the last word read that starts at or before the last token
        self.ahead = next(self.words, None)  # the first word read that starts after it

    def __call__(self, offsets: Iterable[tuple[int, int]]) -> list[int]:
        ids = []
        for s, e in offsets:
            while s < e and self.text[s].isspace():
                s += 1
            while self.ahead is not None and self.ahead[0] <= s:
                self.word, self.ahead = self.ahead, next(self.words, None)
            if s < e and self.word is not None and self.word[0] <= s < self.word[1] and \
                    self.word[2] is not None:  # (None: a word without an English tag)
                ids.append(self.vocab.get(self.word[2], self.other))
            else:
                ids.append(-1)
        return ids
