"""Long documents read in pieces give the whole document's tokens, tags and windows, holding one
piece at a time."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from naive import WORDS, byte_level_tokenizer

from txray_engine.collect import pieces
from txray_engine.collect.corpus import Document
from txray_engine.collect.pieces import encoded, stitched
from txray_engine.collect.sequences import HFTokenizer, WordTokenizer, windows
from txray_engine.features.pos import POS_VOCAB, align_tags
from txray_engine.features.vocab import Vocabulary

PIECE, OVERLAP = 96, 24  # small, so that a short text crosses many pieces

# words, spaces of every kind, punctuation, runs without spaces, characters of several bytes
TEXT = st.lists(st.sampled_from(
    ["the", "cat", "sat", "on", "a", "mat", ".", ",", " ", " ", " ", "  ", "\n", "\t", "café",
     "漢字", "😀", "Größe", "don't", "x" * 40, "ran.", "Big", "!"]), max_size=120).map("".join)


def context_tagger(text):
    """A tagger whose tags depend on the sentence around a word (as a real one's do): a word's
    tag is NN after 'the' or 'a' in its sentence, VB after a noun, else X; '.' ends a
    sentence."""
    out, after = [], "X"
    for w in re.findall(r"\w+|[^\w\s]", text):
        tag = after if w not in (".", "!") else "."
        out.append((w, tag))
        after = "NN" if w in ("the", "a") else "VB" if tag == "NN" else \
            "X" if w in (".", "!") else after
    return out


def word_tokenizer():
    return WordTokenizer(Vocabulary(WORDS), lower=True)


def wordpiece_tokenizer():
    """A BERT-like fast tokenizer with [CLS] ... [SEP] around each document."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "a", "mat", ".", ",",
         "c", "##a", "##t", "##s", "x", "##x", "g", "##r", "##o", "##ß", "##e", "don", "'", "t"])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                pad_token="[PAD]")


TOKENIZERS = {"word": word_tokenizer,
              "byte_level": lambda: HFTokenizer(byte_level_tokenizer()),
              "wordpiece_specials": lambda: HFTokenizer(wordpiece_tokenizer(), special_tokens=True)}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request):
    pytest.importorskip("transformers")
    return TOKENIZERS[request.param]()


def whole(text, tokenizer, tagger):
    ids, offsets = tokenizer.encode(text, offsets=tagger is not None)
    return ids, (align_tags(text, offsets, tagger(text), POS_VOCAB) if tagger else None)


def joined(runs):
    ids, pos = [], []
    for i, p in runs:
        ids += i
        pos += p or []
    return ids, pos or None


@given(text=TEXT)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_pieces_give_the_whole_documents_tokens_and_tags(tokenizer, text):
    expected = whole(text, tokenizer, context_tagger)
    assert joined(encoded(text, tokenizer, context_tagger, PIECE, OVERLAP)) == \
        (expected[0], expected[1] or None)


def test_a_word_longer_than_a_piece_is_read_whole(tokenizer):
    """No agreement in an overlap (one word across it): the piece doubles until it ends."""
    text = "the cat sat . " * 20 + "x" * 500 + " on a mat ." * 30
    assert joined(encoded(text, tokenizer, context_tagger, PIECE, OVERLAP)) == \
        whole(text, tokenizer, context_tagger)


def test_the_real_tagger_and_tokenizer_read_a_page_in_pieces():
    pytest.importorskip("textblob")
    from txray_engine.features.pos import pattern_tagger

    text = ("The cat, which was big, sat on the mat. Dogs ran to the red house! It was small; "
            "the end of a line came.\nA new line starts here, and it doesn't stop. Answer:"
            "         D ") * 12  # (a spaced emoticon pattern respells as ':D')
    real, read = pattern_tagger(), []

    def tagger(t):
        read.append(len(t))
        return real(t)
    for tok in (word_tokenizer(), HFTokenizer(byte_level_tokenizer())):
        read.clear()
        got = joined(encoded(text, tok, tagger, 256, 64))
        assert max(read) <= 256  # (the pieces agreed: none doubled)
        assert got == whole(text, tok, tagger)


@pytest.mark.parametrize("max_length,overlap", [(1, 0), (5, 0), (7, 3), (16, 8)])
def test_windows_of_a_long_document_are_those_of_the_whole(monkeypatch, max_length, overlap):
    tok = word_tokenizer()
    docs = [Document("the cat sat on the mat . " * 30), Document("a dog ran ."), Document(" "),
            Document("the big red cat . " * 9)]
    got = list(windows(docs, tok, max_length, context_tagger, overlap=overlap))
    monkeypatch.setattr(pieces, "PIECE", PIECE)
    monkeypatch.setattr(pieces, "OVERLAP", OVERLAP)
    assert list(windows(docs, tok, max_length, context_tagger, overlap=overlap)) == got
    # and as cut from the whole token list
    ids = tok.encode(docs[0].text)[0]
    first = [u for u in got if u.doc == 0]
    assert [t for u in first for t in u.ids[u.context:]] == ids
    assert [u.last for u in first] == [False] * (len(first) - 1) + [True]
    assert all(len(u.ids) <= max_length and u.context <= overlap for u in first)


def test_a_long_document_is_tokenised_a_piece_at_a_time(monkeypatch):
    """What the memory bound rests on: no call reads more than a piece (a 3 MB line took
    600 MiB when tokenised and tagged whole)."""
    seen = []

    class Counting(WordTokenizer):
        def encode(self, text, offsets=False, special=None):
            seen.append(len(text))
            return super().encode(text, offsets, special)

    tok = Counting(Vocabulary(WORDS), lower=True)
    text = "the cat sat on the mat . " * 400  # 10,000 characters
    tagged = []
    list(encoded(text, tok, lambda t: tagged.append(len(t)) or context_tagger(t), 512, 128))
    assert len(seen) > 20 and max(seen) <= 512 and max(tagged) <= 512
    assert joined(encoded(text, tok, context_tagger, 512, 128)) == whole(text, tok, context_tagger)


def test_tokenizers_that_cannot_be_read_in_pieces_read_whole():
    pytest.importorskip("transformers")
    from tokenizers import processors

    class Slow:  # no offsets
        tok = type("T", (), {"is_fast": False})()
    assert HFTokenizer._probe_around(Slow()) is None
    inside = wordpiece_tokenizer()  # a special token between the text's words is not "around"
    inside._tokenizer.post_processor = processors.TemplateProcessing(
        single="$A:0 [SEP] $A:0", special_tokens=[("[SEP]", 3)])
    tok = HFTokenizer(inside, special_tokens=True)
    assert tok.around() is None
    text = "the cat sat . " * 20
    assert joined(encoded(text, tok, None, PIECE, OVERLAP))[0] == tok.encode(text)[0]


def test_pieces_must_overlap_enough():
    with pytest.raises(ValueError, match="at least 4 overlaps"):
        list(stitched("x" * 1000, lambda a, b: [], 100, 30))


def test_a_word_the_tagger_respelled_does_not_untag_the_rest():
    """pattern reads ': 3' as the emoticon ':3'. Searched for further on, it was found 19,150
    characters later, and every word in between went untagged: two thirds of a 3 MB document.
    Searched for only near the word before, one spelled with more than a few spaces removed
    (':         D') left every later word untagged."""
    from txray_engine.features.pos import word_spans

    text = "Khasian : 3 languages of India . " + "Spain and France . " * 20 + "a :3 face"
    tagged = [("Khasian", "NNP"), (":3", "CD"), ("languages", "NNS"), ("of", "IN"),
              ("India", "NNP"), (".", ".")]
    starts, ends, tags = word_spans(text, tagged)
    assert [text[s:e] for s, e in zip(starts, ends)] == \
        ["Khasian", ": 3", "languages", "of", "India", "."]
    assert starts[2] == text.index("languages") and tags[2] == "NNS"
    text = "Answer:         D and then the cat sat ."
    tagged = [("Answer", "NN"), (":D", "UH"), ("and", "CC"), ("then", "RB"), ("the", "DT")]
    assert [text[s:e] for s, e in zip(*word_spans(text, tagged)[:2])] == \
        ["Answer", ":         D", "and", "then", "the"]
    # a word spelled otherwise (no spaces to take out): dropped, and the next found past it
    text = 'He said "hello there" to them .'
    tagged = [("He", "PRP"), ("said", "VBD"), ("``", "``"), ("hello", "UH"), ("there", "RB"),
              ("\'\'", "\'\'"), ("to", "TO"), ("them", "PRP")]
    assert [text[s:e] for s, e in zip(*word_spans(text, tagged)[:2])] == \
        ["He", "said", "hello", "there", "to", "them"]
    pytest.importorskip("textblob")
    from txray_engine.features.pos import pattern_tagger
    for text in ("Khasian : 3 languages of India . " * 3, "Score:   \t  P . " + "a cat sat . " * 30):
        real = pattern_tagger()(text)
        assert len(word_spans(text, real)[0]) == len(real)


def test_text_with_few_spaces_is_read_whole():
    """A Unigram model breaks ties inside one long word by where it starts: joined at a newline
    inside that word (Python's space, not the tokenizer's), pieces gave '\\n' '\\n\\n' where the
    whole read '\\n' '\\n' '\\n'. Text with so few spaces is read whole (and was read whole
    anyway, after longer and longer pieces, with more memory than whole)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.Unigram([("<unk>", 0.0), ("▁", -1.0), ("a", -0.7), ("\n", -0.2),
                                    ("\n\n", -0.4)], unk_id=0))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    hf = HFTokenizer(transformers.PreTrainedTokenizerFast(tokenizer_object=tok,
                                                          unk_token="<unk>"))
    text = "a" * 31744 + "\n" + "a" * 20000 + "\n\n\n" + "a" * 100
    calls = []
    real = hf.encode
    hf.encode = lambda t, offsets=False, special=None: calls.append(len(t)) or real(t, offsets,
                                                                                    special)
    assert joined(encoded(text, hf)) == (real(text)[0], None) and calls == [len(text)]


def test_word_tokenizer_keeps_words_with_their_marks_whole(tmp_path):
    """Python's \\w leaves combining marks out: 'नमस्ते' was four pieces, a decomposed 'café'
    two, "don’t" three, all <unk> though the vocabulary file held the words."""
    import unicodedata

    from txray_engine.collect.sequences import WordTokenizer
    from txray_engine.features.vocab import Vocabulary
    words = ["<unk>", "नमस्ते", "สวัสดีครับ", "café", "don’t", "it's", "!"]
    tok = WordTokenizer(Vocabulary(words))
    text = f"नमस्ते สวัสดีครับ {unicodedata.normalize('NFD', 'café')} don’t it's!"
    ids, offsets = tok.encode(text, offsets=True)
    assert ids == list(range(1, 7)) and [text[a:b] for a, b in offsets][-2:] == ["it's", "!"]
    assert tok.identity()["words"] == "unicode"  # (a stage split the old way is not resumed)
    ohm = WordTokenizer(Vocabulary(["<unk>", "\u2126"]))  # (an entry not in composed form is
    assert ohm.encode("\u2126")[0] == [1]  # found as written)


def test_words_of_other_scripts_get_no_english_tag():
    """pattern tagged Chinese, Arabic and Thai words and emoji 'NN': the POS stream counted
    them as nouns."""
    pytest.importorskip("textblob")
    from txray_engine.features.pos import english, pattern_tagger
    assert [english(w) for w in ("cat", "café", "猫", "مات", "สวัสดี", "😀", "—", "€")] == \
        [True, True, False, False, False, False, True, True]
    text = "the cat 猫 sat on the مات mat 😀 ."
    tagged = pattern_tagger()(text)
    words = [(w, t) for w, t in tagged]
    assert ("猫", None) in words and ("مات", None) in words and ("😀", None) in words
    offsets = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    tags = [POS_VOCAB[i] if i >= 0 else None for i in align_tags(text, offsets, tagged)]
    assert tags == ["DT", "NN", None, "VBD", "IN", "DT", None, "NN", None, "."]
