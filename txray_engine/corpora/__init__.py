"""Corpora that ship inside installed packages (no download at run time)."""

from .wikipedia import wikipedia_paragraphs, write_wikipedia

__all__ = ["wikipedia_paragraphs", "write_wikipedia"]
