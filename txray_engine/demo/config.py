"""Configurations of the paper pipeline: ``tiny`` (CI), ``small`` (the default demo, minutes on a
2-core CPU) and ``full`` (the paper's LSTM size on all the data)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class DemoConfig:
    name: str
    # pretraining corpus (Wikipedia paragraphs from gensim's test dump)
    max_articles: int | None = None
    max_train_tokens: int | None = None
    heldout_paragraphs: int = 400  # stage collection on held-out Wikipedia text
    vocab_size: int = 10_000
    min_freq: int = 2
    # language model (the paper's small configuration: 1 layer, 100-d)
    emb_dim: int = 100
    hidden: int = 100
    lm_epochs: int = 3
    bptt: int = 35
    lm_batch: int = 32
    lm_lr: float = 2e-3
    # reviews (Pang & Lee): "sentences" (4,000) or "reviews" (1,500 full reviews)
    reviews: str = "sentences"
    max_reviews: int | None = None
    review_max_len: int = 64
    clf_epochs: int = 3
    clf_batch: int = 32
    clf_lr: float = 2e-3
    # collection and pruning
    k: int = 1
    prune_fractions: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5)
    selectors: tuple[str, ...] = ("most_changed", "least_changed", "lowest_mass", "dead",
                                  "random")
    seeds: tuple[int, ...] = (0, 1, 2)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **kw) -> "DemoConfig":
        return replace(self, **kw)


PRESETS = {
    "tiny": DemoConfig("tiny", max_articles=6, max_train_tokens=20_000, heldout_paragraphs=40,
                       vocab_size=2_000, emb_dim=32, hidden=32, lm_epochs=2, lm_batch=16,
                       max_reviews=400, review_max_len=40, clf_epochs=1,
                       prune_fractions=(0.0, 0.5), seeds=(0, 1)),
    "small": DemoConfig("small", max_train_tokens=150_000, heldout_paragraphs=300,
                        vocab_size=8_000, lm_epochs=3),
    "full": DemoConfig("full", vocab_size=15_000, lm_epochs=5, reviews="reviews",
                       review_max_len=400, clf_epochs=4, heldout_paragraphs=600,
                       prune_fractions=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5)),
}


def preset(name: str) -> DemoConfig:
    from ..errors import InputError
    if name not in PRESETS:
        raise InputError(f"unknown demo configuration {name!r}: use {', '.join(PRESETS)}")
    return PRESETS[name]
