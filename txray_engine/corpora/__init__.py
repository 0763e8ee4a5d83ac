"""Corpora that ship inside installed packages (no download at run time)."""

from .reviews import fetch_reviews, read_reviews
from .wikipedia import wikipedia_paragraphs, write_wikipedia

__all__ = ["fetch_reviews", "read_reviews", "wikipedia_paragraphs", "write_wikipedia"]
