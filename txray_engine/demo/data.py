"""Corpora and features of the pipeline: word tokens, a vocabulary from the pretraining text, POS
tags aligned to the tokens (cached on disk), and seeded splits."""

from __future__ import annotations

import hashlib
import json
import random
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..collect.sequences import WordTokenizer, word_pattern
from ..corpora import read_reviews, wikipedia_paragraphs
from ..features.pos import POS_VOCAB, align_tags, pattern_tagger
from ..features.vocab import Vocabulary

SPECIALS = ["<pad>", "<unk>", "<eos>"]


@dataclass
class Docs:
    """Tokenised documents with aligned POS ids and optional labels."""

    ids: list[list[int]]
    pos: list[list[int]]
    labels: list[int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx) -> "Docs":
        return Docs([self.ids[i] for i in idx], [self.pos[i] for i in idx],
                    [self.labels[i] for i in idx] if self.labels is not None else None)

    @property
    def tokens(self) -> int:
        return sum(len(d) for d in self.ids)


def build_vocab(texts, size: int, min_freq: int) -> Vocabulary:
    counts = Counter(unicodedata.normalize("NFC", m.group().lower()) for t in texts
                     for m in word_pattern().finditer(t))
    words = [w for w, c in counts.most_common() if c >= min_freq and w not in SPECIALS]
    return Vocabulary(SPECIALS + words[: max(0, size - len(SPECIALS))])


class PosCache:
    """POS tag ids per text, computed once with the tagger and kept in a JSON file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.hits = self.misses = 0
        self._tagger = None

    def tags(self, text: str, offsets) -> list[int]:
        # (by the tokens' spans too: a text split otherwise has other tags, in any number)
        key = hashlib.sha1(text.encode() + json.dumps(list(offsets)).encode()).hexdigest()
        got = self.data.get(key)
        if got is not None and len(got) == len(offsets):
            self.hits += 1
            return got
        self.misses += 1
        if self._tagger is None:
            self._tagger = pattern_tagger()
        got = align_tags(text, offsets, self._tagger(text), POS_VOCAB)
        self.data[key] = got
        return got

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data))


def encode(texts, tokenizer: WordTokenizer, pos: PosCache, labels=None) -> Docs:
    ids, tags = [], []
    for t in texts:
        i, offs = tokenizer.encode(t, offsets=True)
        ids.append(i)
        tags.append(pos.tags(t, offs))
    return Docs(ids, tags, labels)


@dataclass
class DemoData:
    vocab: Vocabulary
    labels: Vocabulary
    wiki_train: Docs
    wiki_valid: Docs
    wiki_heldout: Docs
    reviews_train: Docs
    reviews_valid: Docs
    reviews_test: Docs
    stats: dict


def load_data(cfg, reviews_dir, cache_dir, seed: int = 0) -> DemoData:
    """Wikipedia split by article (train / valid / held-out) and reviews split 80/10/10."""
    rng = random.Random(seed)
    paras = list(wikipedia_paragraphs(max_articles=cfg.max_articles))
    titles = sorted({t for t, _ in paras})
    rng.shuffle(titles)
    n_hold = max(1, len(titles) // 10)
    hold, valid = set(titles[:n_hold]), set(titles[n_hold:2 * n_hold])
    train_txt = [p for t, p in paras if t not in hold and t not in valid]
    if cfg.max_train_tokens:
        kept, total = [], 0
        for p in train_txt:
            if total >= cfg.max_train_tokens:
                break
            kept.append(p)
            total += len(p.split())
        train_txt = kept
    valid_txt = [p for t, p in paras if t in valid][: max(50, cfg.heldout_paragraphs)]
    hold_txt = [p for t, p in paras if t in hold][: cfg.heldout_paragraphs]
    vocab = build_vocab(train_txt, cfg.vocab_size, cfg.min_freq)
    tok = WordTokenizer(vocab, lower=True)
    pos = PosCache(Path(cache_dir) / "pos_tags.json")
    reviews = read_reviews(reviews_dir, cfg.reviews)
    rng.shuffle(reviews)
    if cfg.max_reviews:
        reviews = reviews[: cfg.max_reviews]
    labels = Vocabulary(["negative", "positive"])
    texts = [t for _, t in reviews]
    y = [labels.id(lab) for lab, _ in reviews]
    rev = encode(texts, tok, pos, y)
    rev.ids = [d[: cfg.review_max_len] for d in rev.ids]
    rev.pos = [d[: cfg.review_max_len] for d in rev.pos]
    n = len(rev)
    a, b = int(0.8 * n), int(0.9 * n)
    data = DemoData(vocab, labels, encode(train_txt, tok, pos), encode(valid_txt, tok, pos),
                    encode(hold_txt, tok, pos), rev.take(range(a)), rev.take(range(a, b)),
                    rev.take(range(b, n)), {})
    pos.save()
    unk = vocab.id("<unk>")
    data.stats = {
        "wikipedia_articles": len(titles), "wiki_train_tokens": data.wiki_train.tokens,
        "wiki_valid_tokens": data.wiki_valid.tokens,
        "wiki_heldout_tokens": data.wiki_heldout.tokens, "vocab_size": len(vocab),
        "reviews": n, "reviews_tokens": rev.tokens,
        "review_unk_rate": sum(i == unk for d in rev.ids for i in d) / max(1, rev.tokens),
        "pos_cache_hits": pos.hits, "pos_cache_misses": pos.misses,
    }
    return data
