"""How a vocabulary's strings read as text.

Byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2, …) spell every byte of a token as one printable
character: ``'Ġthe'`` is ``' the'``, ``'Ã©'`` is ``'é'``. SentencePiece ones (Llama 2, Mistral,
T5, XLM-R) write a space as ``'▁'`` and, with byte fallback, a byte as ``'<0xE2>'``; WordPiece ones
(BERT) mark a piece that goes on a word as ``'##ing'``, every other token starting one. Stores
keep the strings as the tokenizer spells them (they are what aligns stages and fingerprints a
vocabulary); reports and ``txray neurons`` show them as the text they stand for, a word's first
token with the space before it (``' the'``, against ``'the'`` inside a word). A vocabulary's
``text`` names its spelling: ``None`` (the strings are the text), ``"byte_level"``,
``"metaspace"`` or ``"wordpiece"``.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from typing import Iterable

TEXT_KINDS = (None, "byte_level", "metaspace", "wordpiece")
#: The kinds whose strings spell text otherwise than as written.
SPELLED = TEXT_KINDS[1:]
#: A byte-fallback token (``'<0xE2>'``) and a token no text spells (``'[CLS]'``, ``'<s>'``).
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPECIAL = re.compile(r"\[[A-Za-z_]+\]|<[^<>\s]+>")


def _byte_of_char() -> dict[str, int]:
    """The byte-level alphabet: bytes that print as themselves keep their code point, the others
    (controls, space, DEL, NBSP, soft hyphen) take 256, 257, … in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    char = {b: b for b in kept}
    for b in range(256):
        if b not in char:
            char[b] = 256 + len(char) - len(kept)
    return {chr(c): b for b, c in char.items()}


BYTE_OF_CHAR = _byte_of_char()


def _bytes(s: str, text: str = "byte_level") -> bytes | None:
    """The UTF-8 bytes a token of ``text`` spells (None for a token spelled otherwise: a
    byte-level one with a character outside the alphabet, an added token such as a chat marker,
    ``'[CLS]'`` of a WordPiece vocabulary, ``'<s>'`` of a SentencePiece one)."""
    if text == "metaspace":
        byte = _BYTE_TOKEN.fullmatch(s)
        if byte:
            return bytes([int(byte.group(1), 16)])
        return None if _SPECIAL.fullmatch(s) else s.replace("▁", " ").encode("utf-8")
    if text == "wordpiece":
        if _SPECIAL.fullmatch(s):
            return None
        return s[2:].encode("utf-8") if s.startswith("##") and len(s) > 2 else \
            (" " + s).encode("utf-8")
    try:
        return bytes(BYTE_OF_CHAR[c] for c in s)
    except KeyError:
        return None


def _byte_marks(error: UnicodeDecodeError) -> tuple[str, int]:
    """Bytes that are no whole character as ``<0xNN>``, as byte-fallback vocabularies spell
    them (a backslash escape read as a backslash once quoted)."""
    return "".join(f"<0x{b:02X}>" for b in error.object[error.start:error.end]), error.end


codecs.register_error("txray-byte-marks", _byte_marks)


def _decode(b: bytes) -> str:
    """UTF-8 text; bytes that are no whole character (one split over tokens) show as
    ``<0xNN>``."""
    return b.decode("utf-8", errors="txray-byte-marks")


def shown(s: str, text: str | None) -> str:
    """One feature string as it reads (a byte-level, SentencePiece or WordPiece token
    decoded)."""
    if text not in SPELLED:
        return s
    b = _bytes(s, text)
    return s if b is None else _decode(b)


def joined(strings: Iterable[str], text: str | None) -> str:
    """Consecutive tokens as one text: word-level ones separated by spaces, byte-level ones decoded
    together (a character split over two tokens reads whole)."""
    strings = list(strings)
    if text not in SPELLED:
        return " ".join(strings)
    out, run = [], b""
    for s in strings:
        b = _bytes(s, text)
        if b is None:
            out.append(_decode(run) + s)
            run = b""
        else:
            run += b
    return "".join(out) + _decode(run)


def context(before: Iterable[str], mid: str, after: Iterable[str], text: str | None
            ) -> tuple[str, str, str]:
    """A token in its context as three texts: before, the token, after. A byte-level token's
    leading and trailing spaces move outside it (``[movie]`` marks the word), and a character it
    shares with a neighbour is marked whole (``Grö[ße]``, where the token holds half of ß)."""
    before, after = list(before), list(after)
    if text not in SPELLED:
        head, tail = joined(before, text), joined(after, text)
        return head + " " * bool(head), mid, " " * bool(tail) + tail
    parts = [_spelled(before, text), _bytes(mid, text), _spelled(after, text)]
    if None in parts:  # an added token spelled otherwise: each part as it reads
        head, word, tail = joined(before, text), shown(mid, text), joined(after, text)
    else:
        head, word, tail = map(_decode, _whole_characters(*parts))
    core = word.strip()
    if not core:
        return head, word, tail
    start = word.index(core)
    return head + word[:start], core, word[start + len(core):] + tail


def _spelled(strings: list[str], text: str) -> bytes | None:
    """The bytes ``strings`` spell one after another (None if one is spelled otherwise)."""
    parts = [_bytes(s, text) for s in strings]
    return None if None in parts else b"".join(parts)


def _continuation(byte: int) -> bool:
    return 0x80 <= byte < 0xC0


def _whole_characters(head: bytes, mid: bytes, tail: bytes) -> tuple[bytes, bytes, bytes]:
    """Move the bytes of characters ``mid`` shares with ``head`` or ``tail`` into ``mid``."""
    for _ in range(3):  # (a character has at most 3 bytes after its first)
        if not (mid and _continuation(mid[0]) and head and head[-1] >= 0x80):
            break
        head, mid = head[:-1], head[-1:] + mid
    for back in range(1, min(4, len(mid)) + 1):  # the last character's lead byte
        lead = mid[-back]
        if not _continuation(lead):
            size = 4 if lead >= 0xF0 else 3 if lead >= 0xE0 else 2 if lead >= 0xC0 else 1
            take = 0
            while take < size - back and take < len(tail) and _continuation(tail[take]):
                take += 1
            return head, mid + tail[:take], tail[take:]
    return head, mid, tail


def tokenizer_text(tokenizer) -> str | None:
    """How a Hugging Face tokenizer spells text (:data:`TEXT_KINDS`), as its decoder says (alone
    or inside a Sequence), or a slow tokenizer's own parts; None where neither tells."""
    if getattr(tokenizer, "byte_decoder", None) is not None:  # slow GPT-2 style tokenizers
        return "byte_level"
    if getattr(tokenizer, "sp_model", None) is not None:  # slow SentencePiece ones
        return "metaspace"
    if getattr(tokenizer, "wordpiece_tokenizer", None) is not None:  # slow BERT
        return "wordpiece"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = repr(getattr(backend, "decoder", None))
    if "ByteLevel(" in decoder:
        return "byte_level"
    if "Metaspace(" in decoder or "ByteFallback(" in decoder or \
            ("Replace(" in decoder and "▁" in decoder):  # (Llama 2: '▁' replaced, bytes fused)
        return "metaspace"
    if "WordPiece(" in decoder:
        return "wordpiece"
    return None


#: Characters that steer how a line prints: bidirectional overrides and isolates.
_STEERING = frozenset(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))


def is_control(c: str) -> bool:
    """Whether a character acts on a terminal or a line instead of printing: a control character
    (a newline, an escape), a line or paragraph separator, a bidirectional override, a lone
    surrogate."""
    return c in _STEERING or unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")


def printable(s: str) -> str:
    """``s`` for a terminal: a newline as ``↵``, other characters that act on it (an escape
    that would set its title or colours, a right-to-left override) as ``\\x1b``-style escapes."""
    return "".join("↵" if c == "\n" else
                   c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   if is_control(c) else c for c in s)
