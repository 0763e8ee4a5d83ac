"""How feature strings read: byte-level BPE tokens decoded for display, stored as spelled."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from naive import BYTE_LEVEL_TEXT, byte_level_tokenizer, make_hf_model_dir, run_cli
from txray_engine import Vocabulary, open_store
from txray_engine.errors import InputError
from txray_engine.features.text import BYTE_OF_CHAR, context, joined, shown, tokenizer_text


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer()


def test_alphabet_is_a_bijection_onto_bytes():
    assert sorted(BYTE_OF_CHAR.values()) == list(range(256))
    assert BYTE_OF_CHAR["Ġ"] == ord(" ") and BYTE_OF_CHAR["Ċ"] == ord("\n")
    assert BYTE_OF_CHAR["A"] == ord("A") and BYTE_OF_CHAR["é"] == 0xE9


@pytest.mark.parametrize("spelled, reads", [
    ("Ġmovement", " movement"), ("Ã©", "é"), ("Ċ", "\n"), ("<|endoftext|>", "<|endoftext|>"),
    ("Ġ", " "), ("âĢ", "<0xE2><0x80>"),  # two bytes of a three-byte character: shown as bytes
    ("日本", "日本"),  # not in the alphabet (an added token spelled otherwise): as it is
])
def test_shown(spelled, reads):
    assert shown(spelled, "byte_level") == reads
    assert shown(spelled, None) == spelled


def test_joined_reads_a_character_split_over_tokens_whole():
    assert joined(["the", "Ġcaf", "Ã", "©"], "byte_level") == "the café"
    assert joined(["ĠâĢ", "Ķ", "<|endoftext|>", "Ġend"], "byte_level") == " —<|endoftext|> end"
    assert joined(["the", "cat"], None) == "the cat"


CHAR_OF_BYTE = {b: c for c, b in BYTE_OF_CHAR.items()}


@given(text=st.text(), cuts=st.lists(st.integers(0, 200)))
def test_any_text_cut_anywhere_into_byte_tokens_reads_whole(text, cuts):
    """Spelled byte by byte and cut at any bytes (inside characters too), tokens join to the text."""
    data = text.encode("utf-8")
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    tokens = ["".join(CHAR_OF_BYTE[b] for b in data[a:z]) for a, z in zip(edges, edges[1:])]
    assert joined(tokens, "byte_level") == text
    for tok in tokens:  # each alone: its text, or a piece of a character shown as \xNN
        raw = bytes(BYTE_OF_CHAR[c] for c in tok)
        try:
            assert shown(tok, "byte_level") == raw.decode("utf-8")
        except UnicodeDecodeError:
            assert "<0x" in shown(tok, "byte_level")


@given(text=st.text(min_size=1), cut=st.data())
def test_a_marked_token_reads_as_whole_characters(text, cut):
    """Any token of a text cut anywhere: the three parts read the text back, and the mark holds
    whole characters (a character the token shares with a neighbour, whole)."""
    data = text.encode("utf-8")
    a = cut.draw(st.integers(0, len(data) - 1))
    z = cut.draw(st.integers(a + 1, len(data)))
    spell = lambda b: "".join(CHAR_OF_BYTE[x] for x in b)  # noqa: E731
    head, word, tail = context([spell(data[:a])], spell(data[a:z]), [spell(data[z:])],
                               "byte_level")
    assert head + word + tail == text and "<0x" not in head + word + tail
    assert word.strip() == word or not word.strip()


def test_context_marks_the_word_not_its_space():
    assert context(["The"], "Ġmovie", ["Ġwas", "Ġgood"], "byte_level") == \
        ("The ", "movie", " was good")
    assert context([], "Ċ", ["Ġnext"], "byte_level") == ("", "\n", " next")
    assert context(["the", "big"], "cat", [], None) == ("the big ", "cat", "")


def test_hugging_face_decodes_each_token_as_shown(tok):
    """Against the tokenizer's own ByteLevel decoder, token by token, and for whole texts."""
    vocab = Vocabulary.from_tokenizer(tok)
    assert vocab.text == "byte_level" and "text='byte_level'" in repr(vocab)
    checked = 0
    for s in vocab:
        if "<0x" not in vocab.shown(s):  # a whole character or more
            assert vocab.shown(s) == tok.convert_tokens_to_string([s]), s
            checked += 1
    assert checked >= 175  # all but the bytes of split characters (0x80-0xff alone and pieces)
    for text in BYTE_LEVEL_TEXT:
        assert joined(tok.tokenize(text), "byte_level") == text


def test_which_tokenizers_are_byte_level(tok):
    import transformers
    from tokenizers import Tokenizer, decoders, models

    assert tokenizer_text(tok) == "byte_level"

    class SlowGPT2:  # transformers 4's Python GPT2Tokenizer: no backend, a byte table
        byte_decoder = BYTE_OF_CHAR

    assert tokenizer_text(SlowGPT2()) == "byte_level"
    seq = Tokenizer(models.BPE())
    seq.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    assert tokenizer_text(transformers.PreTrainedTokenizerFast(tokenizer_object=seq)) == \
        "byte_level"
    word = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1}, unk_token="<unk>"))
    assert tokenizer_text(transformers.PreTrainedTokenizerFast(tokenizer_object=word)) is None
    with pytest.raises(InputError, match="unknown vocabulary text"):
        Vocabulary(["a"], text="bytes")


def test_store_keeps_spelling_and_commands_show_text(tmp_path):
    model_dir = make_hf_model_dir(tmp_path / "m", tokenizer="byte_level")
    store = tmp_path / "s.zarr"
    for stage in ("a", "b"):  # two corpora: a merge refuses to count one corpus twice
        corpus = tmp_path / f"{stage}.txt"
        corpus.write_text("\n".join(BYTE_LEVEL_TEXT * (2 if stage == "a" else 3)) + "\n")
        run_cli("collect", "--model", model_dir, "--corpus", corpus, "--layers",
                "transformer.h.1.mlp.act", "--streams", "token,predicted", "--examples", 2,
                "-k", 4, "--store", store, "--stage", stage, "-q")
    st = open_store(store).stage("a")
    assert st.meta["streams"]["token"] == {"source": "input", "size": 320, "text": "byte_level"}
    assert st.vocab("predicted").text == "byte_level"
    assert "Ġcaf" in list(st.vocab("token"))  # stored as spelled
    attrs = json.loads((store / "a" / "vocab" / "zarr.json").read_text())
    assert "Ġcaf" in attrs["attributes"]["txray_engine"]["vocabularies"]["token"]

    out = run_cli("neurons", store, "--stage", "a", "--top", 16, "--features", 20)
    assert "Ġ" not in out and "' the'" in out
    ex = [line for line in out.splitlines() if line.lstrip().startswith("example")]
    assert ex and all(line.count("[") == 1 for line in ex) and "Ġ" not in "".join(ex)
    run_cli("merge", f"{store}::a", f"{store}::b", "--store", store, "--stage", "ab")
    assert open_store(store).stage("ab").vocab("token").text == "byte_level"  # (via the sums)

    run_cli("report", store, "--stages", "a,b", "--out", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    payload = json.loads(page.split('id="txray-explorer-data">', 1)[1].split("</script>", 1)[0])
    strings = payload["layers"][0]["streams"][0]["strings"]
    assert strings and not any("Ġ" in s for s in strings)
    contexts = [item for rows in payload["layers"][0]["examples"]["stages"]["a"] for item in rows]
    assert contexts and all(len(item) == 4 and "Ġ" not in "".join(item[1:]) for item in contexts)


def test_printable_keeps_escapes_from_the_terminal():
    """A corpus line holding an escape sequence (setting the terminal's title) printed raw in a
    top example's context."""
    from txray_engine.features.text import printable
    assert printable("cat\x1b]0;PWNED\x07 sat\non é 漢\u200b") == \
        "cat\\x1b]0;PWNED\\x07 sat↵on é 漢\u200b"
    assert printable("a\ud800b") == "a\\ud800b"
    assert printable("abc\u202edef\u2028") == "abc\\u202edef\\u2028"  # (reorders a line)


def _sentencepiece_like(byte_fallback: bool):
    """A Unigram tokenizer spelling spaces as '▁' (T5, XLM-R), or, with ``byte_fallback``, a
    Llama-2-style BPE whose unknown characters are '<0xNN>' bytes (no download)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    pieces = ["<unk>", "<s>", "▁the", "▁cat", "▁sat", "▁on", "▁", "t", "h", "e", "c", "a", "s",
              "o", "n", "at", "▁mat", ".", "é", "▁caf", "▁naïve"]
    if byte_fallback:
        vocab = {p: i for i, p in enumerate(pieces + [f"<0x{b:02X}>" for b in range(256)])}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        tok = Tokenizer(models.Unigram([(p, -float(len(p) < 2)) for p in pieces], unk_id=0))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.mark.parametrize("kind", ["metaspace", "byte_fallback", "wordpiece"])
def test_sentencepiece_and_wordpiece_tokens_read_as_their_decoder_reads_them(kind):
    """Llama 2, Mistral, T5, XLM-R and BERT streams showed '▁is ▁op en', '<0xF0> <0x9F> …'
    and 'e ##v ##i ##l' where byte-level ones read as text."""
    pytest.importorskip("transformers")
    from test_pieces import wordpiece_tokenizer

    from tokenizers import decoders

    tok = wordpiece_tokenizer() if kind == "wordpiece" else \
        _sentencepiece_like(kind == "byte_fallback")
    if kind == "wordpiece":
        tok.backend_tokenizer.decoder = decoders.WordPiece()  # (as BERT's tokenizer.json)
    vocab = Vocabulary.from_tokenizer(tok)
    assert vocab.text == ("wordpiece" if kind == "wordpiece" else "metaspace")
    texts = (["the cat sat on a mat", "cats sat on a grx"] if kind == "wordpiece" else
             ["the cat sat on the mat.", "the café naïve 😀 cat"])
    for text in texts:
        pieces = tok.tokenize(text)
        if kind == "byte_fallback":
            assert any(p.startswith("<0x") for p in pieces)
        assert joined(pieces, vocab.text).strip() == tok.convert_tokens_to_string(pieces).strip()
        before, word, after = context(pieces[:1], pieces[1], pieces[2:], vocab.text)
        assert (before + word + after).strip() == tok.convert_tokens_to_string(pieces).strip()
        assert word == word.strip() and word
    assert vocab.shown("<unk>" if kind != "wordpiece" else "[CLS]") in ("<unk>", "[CLS]")
