"""Corpora: documents from text files or JSONL, read lazily, with an identity for resume checks.

- ``.txt`` (or ``--format text``): one document per non-empty line (``unit="line"``) or per file
  (``unit="file"``).
- ``.jsonl`` (or ``--format jsonl``): one JSON object per line; the text in ``text_field`` and,
  when asked, a label in ``label_field``.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import CorpusError

FORMATS = ("auto", "text", "jsonl")


@dataclass
class Document:
    text: str
    label: str | None = None


@dataclass
class Corpus:
    """Files making a corpus, read in the given order."""

    paths: Sequence[Path]
    format: str = "auto"
    unit: str = "line"
    text_field: str = "text"
    label_field: str | None = None

    def __post_init__(self):
        self._documents: int | None = None
        if isinstance(self.paths, (str, os.PathLike)):  # one file
            self.paths = [self.paths]
        self.paths = [Path(p) for p in self.paths]
        if not self.paths:
            raise CorpusError("no corpus files given: pass one or more text or JSONL files")
        for p in self.paths:
            if not p.is_file():
                raise CorpusError(f"corpus file {str(p)!r} does not exist or is not a file")
        if self.format not in FORMATS:
            raise CorpusError(f"unknown corpus format {self.format!r}: use {', '.join(FORMATS)}")
        if self.unit not in ("line", "file"):
            raise CorpusError(f"unknown document unit {self.unit!r}: use 'line' or 'file'")

    def _format(self, path: Path) -> str:
        if self.format != "auto":
            return self.format
        return "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "text"

    def __iter__(self) -> Iterator[Document]:
        for path in self.paths:
            try:
                yield from self._read(path)
            except UnicodeDecodeError:
                raise _not_utf8(path) from None

    def _read(self, path: Path) -> Iterator[Document]:
        fmt = self._format(path)
        with open(path, encoding="utf-8-sig") as fh:
            if fmt == "text" and self.unit == "file":
                text = fh.read().strip()
                if text:
                    yield Document(text)
                return
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                if fmt == "text":
                    yield Document(line)
                else:
                    yield self._json_doc(path, lineno, line)

    def _json_doc(self, path: Path, lineno: int, line: str) -> Document:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix the line") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(self.text_field), str):
            raise CorpusError(f"{path}:{lineno}: no string field {self.text_field!r}; set "
                              f"--text-field to the field holding the text")
        label = None
        if self.label_field is not None:
            if self.label_field not in obj:
                raise CorpusError(f"{path}:{lineno}: no field {self.label_field!r} for the label "
                                  f"stream; set --label-field or drop the label stream")
            value = obj[self.label_field]
            if value is None or isinstance(value, (list, dict)):
                raise CorpusError(f"{path}:{lineno}: the label {self.label_field!r} is "
                                  f"{json.dumps(value)}, not a class name: give each document a "
                                  f"string or number as its label")
            label = value if isinstance(value, str) else json.dumps(value)  # true, not 'True'
            label = unicodedata.normalize("NFC", label)  # ('négatif' composed or not: one class)
        text = obj[self.text_field]
        if _SURROGATE.search(text):  # (JSON can write half of a character, as a cut emoji
            text = _SURROGATE.sub("\ufffd", text)  # '\ud83d': no tokenizer reads it)
        return Document(text, label)

    def count_documents(self) -> int:
        """Documents in the corpus (for progress and ETA); free after :meth:`identity`."""
        if self._documents is None:
            self.identity()
        return self._documents

    def labels(self) -> list[str]:
        """The sorted set of labels (one pass over the files)."""
        if self.label_field is None:
            raise CorpusError("the label stream needs labels: use a JSONL corpus and --label-field")
        if any(self._format(p) != "jsonl" for p in self.paths):
            raise CorpusError("labels come from JSONL corpora only: convert the corpus to JSONL "
                              "with a label field")
        return sorted({d.label for d in self})

    def identity(self) -> dict:
        """Names, sizes and content hashes of the files, plus how they are read. The same pass
        decodes them as the documents are read, so that a byte that is not UTF-8 stops the run
        before it starts (with its line), and counts the documents as they will be read
        (:meth:`count_documents`; a lone '\\r' ends a line, a line of Unicode spaces is empty)."""
        files, documents = [], 0
        for p in self.paths:
            h = hashlib.sha256()
            whole_file = self._format(p) == "text" and self.unit == "file"
            nonempty = 0
            with open(p, "rb", buffering=0) as raw, io.TextIOWrapper(
                    io.BufferedReader(_Hashing(raw, h)), encoding="utf-8-sig") as fh:
                try:
                    for lineno, line in enumerate(fh, 1):  # (text mode, as _read: the same
                        nonempty += bool(line.strip())  # lines, the same spaces)
                        if "\x00" in line:  # (UTF-16 without a byte order mark reads as UTF-8)
                            raise CorpusError(f"{p}:{lineno}: a NUL character, which text does "
                                              f"not hold: the file is UTF-16 or binary; convert "
                                              f"it to UTF-8 text, e.g. iconv -f utf-16 -t utf-8")
                except UnicodeDecodeError:
                    raise _not_utf8(p) from None
            documents += min(nonempty, 1) if whole_file else nonempty
            files.append({"name": p.name, "bytes": p.stat().st_size, "sha256": h.hexdigest()})
        self._documents = documents
        return {"files": files, "format": self.format, "unit": self.unit,
                "text_field": self.text_field, "label_field": self.label_field}


class _Hashing(io.RawIOBase):
    """A binary file that adds every byte read from it to a hash."""

    def __init__(self, raw, digest):
        self.raw, self.digest = raw, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
        return n


#: Half of a UTF-16 pair, alone (valid JSON, not text).
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Leading bytes of compressed files a corpus may be given as (read as text, they fail as
#: "not UTF-8 at byte 0x8b").
ARCHIVES = ((b"\x1f\x8b", "gzip file"), (b"PK\x03\x04", "zip archive"),
            (b"\xfd7zXZ\x00", "xz file"), (b"\x28\xb5\x2f\xfd", "zstandard file"))
#: Byte order marks of the Unicode encodings a corpus may come in instead of UTF-8.
ENCODINGS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
             (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def _not_utf8(path: Path) -> CorpusError:
    """The error for a file that is not UTF-8, naming its first line that is not, counted as the
    documents are (a lone CR ends a line), and the character column (text is decoded ahead of the
    line being read, so the decoder's own place is not the line's)."""
    lineno = 0
    with open(path, "rb") as fh:
        head = fh.read(8)
        kind = next((k for magic, k in ARCHIVES if head.startswith(magic)), None)
        if kind is not None:
            return CorpusError(f"{path}: a {kind}, not text; unpack it first (the corpus is "
                               f"read as UTF-8 text or JSONL)")
        encoding = next((e for bom, e in ENCODINGS if head.startswith(bom)), None)
        if encoding is not None:
            return CorpusError(f"{path}: {encoding.upper()} text; convert it to UTF-8, e.g. "
                               f"iconv -f {encoding} -t utf-8")
        fh.seek(0)
        for chunk in fh:
            for line in chunk.splitlines(keepends=True):  # (\n, \r\n and a lone \r)
                lineno += 1
                if lineno == 1 and line.startswith(codecs.BOM_UTF8):
                    line = line[len(codecs.BOM_UTF8):]
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    column = len(line[:e.start].decode("utf-8")) + 1
                    return CorpusError(f"{path}:{lineno}: not UTF-8 text (byte "
                                       f"{line[e.start]:#04x} at column {column}); convert the "
                                       f"file to UTF-8, e.g. iconv -f cp1252 -t utf-8 (Windows "
                                       f"text; -f latin1 for ISO 8859-1)")
    return CorpusError(f"{path}: not UTF-8 text (it ends inside a character); convert the file "
                       f"to UTF-8")
