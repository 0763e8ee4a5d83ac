"""How a vocabulary's strings read as text.

Byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2, …) spell every byte of a token as one printable
character: ``'Ġthe'`` is ``' the'``, ``'Ã©'`` is ``'é'``. Stores keep the strings as the tokenizer
spells them (they are what aligns stages and fingerprints a vocabulary); reports and
``txray neurons`` show them as the text they stand for. A vocabulary's ``text`` names its spelling:
``None`` (the strings are the text) or ``"byte_level"``.
"""

from __future__ import annotations

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


def _decode(b: bytes) -> str:
    """UTF-8 text; bytes that are not (a character split over tokens) show as ``\\xNN``."""
    return b.decode("utf-8", errors="backslashreplace")


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
    """A token in its context as three texts: before, the token, after (a byte-level token's
    leading and trailing spaces move outside it, so that ``[movie]`` marks the word)."""
    head, tail = joined(before, text), joined(after, text)
    if text != "byte_level":
        return head + " " * bool(head), mid, " " * bool(tail) + tail
    word = shown(mid, text)
    core = word.strip()
    if not core:
        return head, word, tail
    start = word.index(core)
    return head + word[:start], core, word[start + len(core):] + tail


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
