"""Independent test references: a per-position Python loop in float64, and tiny local models."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import numpy as np
import torch


def naive_sums(acts, features: dict, k, mask=None):
    """Loop over positions; returns per stream {(n, f): [count, mass, peak]} and neuron totals.

    Tie-break: stable descending order (lower neuron index first among equal activations).
    """
    acts = np.asarray(acts, dtype=np.float64)
    n_neurons = acts.shape[-1]
    a2 = acts.reshape(-1, n_neurons)
    feats = {s: np.asarray(f).reshape(-1) for s, f in features.items()}
    keep = np.ones(a2.shape[0], bool) if mask is None else np.asarray(mask).reshape(-1).astype(bool)
    kk = n_neurons if k == "all" else k
    cells = {s: defaultdict(lambda: [0, 0.0, -np.inf]) for s in features}
    freq = {s: defaultdict(int) for s in features}
    missing = {s: 0 for s in features}
    totals = np.zeros(n_neurons, np.int64)
    tot_mass = np.zeros(n_neurons)
    tokens = 0
    for t in range(a2.shape[0]):
        if not keep[t]:
            continue
        tokens += 1
        row = a2[t]
        chosen = sorted(range(n_neurons), key=lambda n: (-row[n], n))[:kk]
        for n in chosen:
            totals[n] += 1
            tot_mass[n] += max(row[n], 0.0)
        for s, f in feats.items():
            fid = int(f[t])
            if fid < 0:
                missing[s] += 1
                continue
            freq[s][fid] += 1
            for n in chosen:
                c = cells[s][(n, fid)]
                c[0] += 1
                c[1] += max(row[n], 0.0)
                c[2] = max(c[2], row[n])
    return {"cells": cells, "freq": freq, "missing": missing, "neuron_count": totals,
            "neuron_mass": tot_mass, "tokens": tokens}


def assert_matches_naive(layer_state, ref, rtol=1e-12):
    assert layer_state.tokens == ref["tokens"]
    np.testing.assert_array_equal(layer_state.neuron_count.numpy(), ref["neuron_count"])
    np.testing.assert_allclose(layer_state.neuron_mass.numpy(), ref["neuron_mass"], rtol=rtol,
                               atol=1e-12)
    for s, state in layer_state.streams.items():
        st = state.to_stats()
        got = {(int(r), int(c)): (int(cn), float(m), float(p)) for r, c, cn, m, p in
               zip(st.rows(), st.indices, st.count, st.mass, st.peak)}
        want = ref["cells"][s]
        assert set(got) == set(want), s
        for key, (cn, m, p) in want.items():
            g = got[key]
            assert g[0] == cn, (s, key)
            np.testing.assert_allclose(g[1], m, rtol=rtol, atol=1e-12)
            assert g[2] == np.float32(p), (s, key)
        freq = np.zeros(st.n_features, np.int64)
        for f, c in ref["freq"][s].items():
            freq[f] = c
        np.testing.assert_array_equal(st.feature_freq, freq)
        assert st.missing == ref["missing"][s]


WORDS = ["<unk>", "<pad>"] + ("the a cat dog sat on mat and ran . , is was big small red "
                              "house tree").split()


def make_word_model(tmp_path, seed=0):
    """Save a tiny LSTM LM + vocab + a text corpus + a labelled JSONL corpus under tmp_path."""
    from txray_engine.models import LSTMLanguageModel

    torch.manual_seed(seed)
    rng = random.Random(seed)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    model = LSTMLanguageModel(len(WORDS), 16, 12)
    ckpt = tmp_path / "lstm.pt"
    torch.save(model, ckpt)
    text = tmp_path / "corpus.txt"
    text.write_text("".join(" ".join(rng.choice(WORDS[2:]) + ("" if rng.random() < .9 else "zzz")
                                     for _ in range(rng.randint(2, 30))) + "\n"
                            for _ in range(120)))
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS[2:])
                                                          for _ in range(rng.randint(2, 30))),
                                         "label": rng.choice(["neg", "pos"])}) + "\n"
                             for _ in range(60)))
    return {"dir": tmp_path, "model": model, "ckpt": ckpt, "vocab": vocab, "text": text,
            "jsonl": jsonl}


def own_hook_output(model, layer, call):
    """What the module ``layer`` returned during ``call()``, from a forward hook of the test's
    own (the engine's capture not involved)."""
    got = []
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: got.append(o))
    try:
        with torch.no_grad():
            call()
    finally:
        h.remove()
    return got[0]


def tree_digest(path):
    """{relative path: sha256} of every file under ``path`` (to prove a store did not change)."""
    import hashlib
    from pathlib import Path

    root = Path(path)
    if not root.exists():
        return None
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


BYTE_LEVEL_TEXT = ["the café sat on the mat .", "naïve dogs ran, and a red house was small .",
                   "Größe: 漢字 😀 — the end\nof a line"]


def byte_level_tokenizer():
    """A byte-level BPE fast tokenizer trained here on :data:`BYTE_LEVEL_TEXT` (as GPT-2's)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(BYTE_LEVEL_TEXT, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                eos_token="<|endoftext|>")


def make_hf_model_dir(path, arch="gpt2", tokenizer="word"):
    """A tiny Hugging Face model directory with a word-level fast tokenizer, or with
    ``tokenizer="byte_level"`` a byte-level BPE one (no download)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    if tokenizer == "word":
        vocab = {w: i for i, w in enumerate(WORDS)}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                                    pad_token="<pad>")
    else:
        fast = byte_level_tokenizer()
    size = len(fast)
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=size, n_positions=64, n_embd=16, n_layer=2,
                                      n_head=2)
        model = transformers.GPT2LMHeadModel(cfg)
    elif arch == "bert":  # an encoder without a head (a sentence encoder)
        cfg = transformers.BertConfig(vocab_size=size, hidden_size=16, intermediate_size=24,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      max_position_embeddings=64)
        model = transformers.BertModel(cfg)
    elif arch == "t5":
        cfg = transformers.T5Config(vocab_size=size, d_model=16, d_ff=24, d_kv=8, num_layers=2,
                                    num_heads=2, decoder_start_token_id=0, pad_token_id=1)
        model = transformers.T5ForConditionalGeneration(cfg)
    else:  # "llama", or "llama_cls": a fine-tuned classifier's checkpoint
        cfg = transformers.LlamaConfig(vocab_size=size, hidden_size=16, intermediate_size=24,
                                       num_hidden_layers=2, num_attention_heads=2,
                                       num_key_value_heads=1, max_position_embeddings=64,
                                       pad_token_id=1)
        model = (transformers.LlamaForSequenceClassification if arch == "llama_cls" else
                 transformers.LlamaForCausalLM)(cfg)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def run_cli(*args, code=0) -> str:
    """Run ``txray ARGS`` in-process; assert the exit code; return what it printed."""
    from click.testing import CliRunner

    from txray_engine.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res.output


def naive_top_examples(batches, m: int):
    """Each neuron's first ``m`` offered activations by (float32 value descending, offer order):
    a Python loop over ``batches`` of ``(acts [P, N], doc [P], pos [P], context [P, W])``.
    Returns ``{n: [(value, doc, pos, context tuple), ...]}``; ``-inf`` is never kept."""
    offered = defaultdict(list)
    for acts, doc, pos, ctx in batches:
        a = np.asarray(acts, dtype=np.float32)
        for p in range(a.shape[0]):
            for n in range(a.shape[1]):
                if a[p, n] != -np.inf:
                    offered[n].append((float(a[p, n]), int(doc[p]), int(pos[p]),
                                       tuple(int(c) for c in ctx[p])))
    return {n: sorted(rows, key=lambda r: -r[0])[:m] for n, rows in offered.items()}


def assert_top_examples_match(ex, ref, n_neurons: int) -> None:
    """``TopExamples`` ``ex`` holds ``ref`` (:func:`naive_top_examples`), empty slots elsewhere."""
    for n in range(n_neurons):
        want = ref.get(n, [])
        got = [(float(ex.value[n, j]), int(ex.doc[n, j]), int(ex.pos[n, j]),
                tuple(int(c) for c in ex.context[n, j])) for j in range(ex.m)]
        assert got[: len(want)] == want, f"neuron {n}"
        empty = (-np.inf, -1, -1, (-1,) * ex.width)
        assert all(g == empty for g in got[len(want):]), f"neuron {n}: empty slots"


class TimeFirstWordLM(torch.nn.Module):
    """PyTorch's word-language-model example's layout: ``forward(ids [time, batch])`` returns
    flat log-probabilities ``[time·batch, V]`` and the hidden state; the weights of an
    ``LSTMLanguageModel`` (batch-first), so both must give the same statistics."""

    def __init__(self, lm):
        super().__init__()
        self.encoder, self.rnn, self.decoder = lm.embedding, torch.nn.LSTM(
            lm.lstm.input_size, lm.lstm.hidden_size), lm.decoder
        self.rnn.load_state_dict(lm.lstm.state_dict())

    def forward(self, ids):
        out, hidden = self.rnn(self.encoder(ids))
        return torch.log_softmax(self.decoder(out).flatten(0, 1), dim=1), hidden
