"""How a vocabulary's strings read as text.

Byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2, …) spell every byte of a token as one printable
character: ``'Ġthe'`` is ``' the'``, ``'Ã©'`` is ``'é'``. Stores keep the strings as the tokenizer
spells them (they are what aligns stages and fingerprints a vocabulary); reports and
``txray neurons`` show them as the text they stand for. A vocabulary's ``text`` names its spelling:
``None`` (the strings are the text) or ``"byte_level"``.
"""

from __future__ import annotations

import codecs
import unicodedata
from typing import Iterable

TEXT_KINDS = (None, "byte_level")


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


def _bytes(s: str) -> bytes | None:
    """The bytes a byte-level string spells (None where a character is not in the alphabet: an
    added token such as a chat marker spelled otherwise)."""
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
    """One feature string as it reads (a byte-level token decoded)."""
    if text != "byte_level":
        return s
    b = _bytes(s)
    return s if b is None else _decode(b)


def joined(strings: Iterable[str], text: str | None) -> str:
    """Consecutive tokens as one text: word-level ones separated by spaces, byte-level ones decoded
    together (a character split over two tokens reads whole)."""
    strings = list(strings)
    if text != "byte_level":
        return " ".join(strings)
    out, run = [], b""
    for s in strings:
        b = _bytes(s)
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
    if text != "byte_level":
        head, tail = joined(before, text), joined(after, text)
        return head + " " * bool(head), mid, " " * bool(tail) + tail
    parts = [_bytes("".join(before)), _bytes(mid), _bytes("".join(after))]
    if None in parts:  # an added token spelled otherwise: each part as it reads
        head, word, tail = joined(before, text), shown(mid, text), joined(after, text)
    else:
        head, word, tail = map(_decode, _whole_characters(*parts))
    core = word.strip()
    if not core:
        return head, word, tail
    start = word.index(core)
    return head + word[:start], core, word[start + len(core):] + tail


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
    """``"byte_level"`` for a byte-level Hugging Face tokenizer (its decoder, or a slow tokenizer's
    byte table, says so), else None."""
    if getattr(tokenizer, "byte_decoder", None) is not None:  # slow GPT-2 style tokenizers
        return "byte_level"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None and "ByteLevel(" in repr(decoder):  # alone or inside a Sequence
        return "byte_level"
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
