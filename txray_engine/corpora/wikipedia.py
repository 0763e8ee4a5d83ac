"""English Wikipedia articles from gensim's test data (106 articles, ~480k words).

Source: PyPI ``gensim`` 4.4.0, file
``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``
(gensim LGPL-2.1; article text Wikipedia, CC BY-SA). MediaWiki markup is removed with gensim's
``filter_wiki``, redirects are skipped, and each paragraph becomes one document.
"""

from __future__ import annotations

import bz2
import importlib.util
import re
from pathlib import Path
from typing import Iterator

from ..errors import CorpusError

DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

_EMPHASIS = re.compile(r"'{2,}")
_HEADING = re.compile(r"^\s*=+.*=+\s*$")
_SPACES = re.compile(r"\s+")


def dump_path() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the Wikipedia corpus needs gensim: pip install 'txray_engine[data]'")
    path = Path(list(spec.submodule_search_locations)[0]) / DUMP
    if not path.is_file():
        raise CorpusError(f"gensim is installed but its Wikipedia test dump is missing ({path})")
    return path


def wikipedia_paragraphs(min_words: int = 8, max_articles: int | None = None
                         ) -> Iterator[tuple[str, str]]:
    """``(article title, paragraph)`` pairs of plain text, in dump order."""
    dump = dump_path()  # (says to install gensim where it is missing)
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    n = 0
    with bz2.open(dump, "rb") as fh:
        for title, text, _pageid in extract_pages(fh):
            if text.lstrip().lower().startswith("#redirect"):
                continue
            if max_articles is not None and n >= max_articles:
                return
            n += 1
            for para in _EMPHASIS.sub("", filter_wiki(text)).split("\n\n"):
                lines = [ln for ln in para.splitlines() if not _HEADING.match(ln)]
                para = _SPACES.sub(" ", " ".join(lines)).strip()
                if len(para.split()) >= min_words:
                    yield title, para


def write_wikipedia(out, min_words: int = 8, max_articles: int | None = None) -> dict:
    """Write one paragraph per line to ``out``; returns counts."""
    out = Path(out)
    dump_path()  # before the file is opened: no empty file where gensim is missing
    out.parent.mkdir(parents=True, exist_ok=True)
    titles, paras, words = set(), 0, 0
    with open(out, "w", encoding="utf-8") as fh:
        for title, para in wikipedia_paragraphs(min_words, max_articles):
            fh.write(para + "\n")
            titles.add(title)
            paras += 1
            words += len(para.split())
    return {"path": str(out), "articles": len(titles), "paragraphs": paras, "words": words}
