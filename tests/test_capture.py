"""Capture on LSTM, GRU, a plain MLP and Hugging Face GPT-2 / BERT / Llama built from small configs."""

import warnings

import pytest
import torch
from torch import nn

from naive import assert_matches_naive, naive_sums
from naive import own_hook_output as _reference_acts
from txray_engine import Batch, Collector, Stream, Vocabulary, same_sums
from txray_engine.capture import LayerCapture, output_tensor, resolve_layers
from txray_engine.errors import InputError, LayerNotFoundError

V = 23


class RNNLM(nn.Module):
    def __init__(self, cell=nn.LSTM, batch_first=False, packed=False):
        super().__init__()
        self.emb = nn.Embedding(V, 8)
        self.rnn = cell(8, 6, batch_first=batch_first)
        self.batch_first, self.packed = batch_first, packed
        self.out = nn.Linear(6, V)

    def forward(self, ids, lengths=None):
        x = self.emb(ids)
        if self.packed:
            x = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                  enforce_sorted=False)
            y, _ = self.rnn(x)
            y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True,
                                                    total_length=ids.shape[1])
            return self.out(y)
        if not self.batch_first:
            x = x.transpose(0, 1)
        y, _ = self.rnn(x)
        if not self.batch_first:
            y = y.transpose(0, 1)
        return self.out(y)


def _batch(b=3, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return ids, mask, lengths


def _streams():
    return [Stream("token", Vocabulary.of_size(V), "input")]


@pytest.mark.parametrize("cell,batch_first", [(nn.LSTM, False), (nn.LSTM, True),
                                              (nn.GRU, False), (nn.GRU, True)])
def test_recurrent_layers_tuple_output_and_layout(cell, batch_first):
    torch.manual_seed(0)
    model = RNNLM(cell, batch_first)
    ids, mask, _ = _batch()
    with Collector(model, ["rnn"], _streams(), k=2) as col:
        col.step(Batch(input_ids=ids, mask=mask))
    out = _reference_acts(model, "rnn", lambda: model(ids))[0]
    acts = out if batch_first else out.transpose(0, 1)
    ref = naive_sums(acts.numpy(), {"token": ids.numpy()}, 2, mask.numpy())
    assert_matches_naive(col.accumulator.layers["rnn"], ref, rtol=1e-9)


def test_packed_sequence_output_is_padded_batch_first():
    torch.manual_seed(0)
    model = RNNLM(nn.LSTM, batch_first=True, packed=True)
    ids, mask, lengths = _batch()
    captured = []
    h = model.rnn.register_forward_hook(lambda m, i, o: captured.append(output_tensor(o, m)))
    with torch.no_grad():
        ref = model(ids, lengths)
    h.remove()
    assert captured[0].shape[:2] == (3, int(lengths.max()))
    assert torch.allclose(captured[0][0], model.rnn(model.emb(ids[:1]))[0][0].detach(), atol=1e-6)
    assert ref.shape == (3, 7, V)


def test_packed_sequences_padded_past_the_longest_count_as_the_trimmed_batch():
    """Batches padded to a fixed length longer than their longest sequence: the packed output
    is shorter than the mask, and the masked positions past it are padding."""
    torch.manual_seed(0)
    model = RNNLM(nn.LSTM, batch_first=True, packed=True)
    ids, mask, lengths = _batch(t=9)
    lengths = torch.minimum(lengths, torch.tensor(6))
    mask = torch.arange(9)[None, :] < lengths[:, None]
    accs = []
    for t in (9, 6):
        with Collector(model, ["rnn"], _streams(), k=2) as col:
            col.step(Batch(input_ids=ids[:, :t], inputs={"ids": ids[:, :t], "lengths": lengths},
                           mask=mask[:, :t]))
        accs.append(col.accumulator)
    assert accs[0].layers["rnn"].tokens == int(lengths.sum()) and same_sums(*accs)
    mask[0, 7] = True  # a real position the output does not have: still an error
    with pytest.raises(InputError, match="mask has shape"):
        with Collector(model, ["rnn"], _streams(), k=2) as col:
            col.step(Batch(input_ids=ids, inputs={"ids": ids, "lengths": lengths}, mask=mask))


def test_plain_mlp_any_leading_shape():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 10), nn.ReLU(), nn.Linear(10, 3))
    x = torch.randn(17, 5)
    labels = torch.randint(0, 3, (17,))
    streams = [Stream("label", Vocabulary(["a", "b", "c"]), "feature")]
    with Collector(mlp, ["1"], streams, k=3) as col:
        col.step(Batch(input_ids=torch.zeros(17, dtype=torch.long), inputs=x,
                       features={"label": labels}))
    acts = torch.relu(mlp[0](x)).detach()
    assert_matches_naive(col.accumulator.layers["1"],
                         naive_sums(acts.numpy(), {"label": labels.numpy()}, 3))


def test_resolve_exact_glob_order_and_close_matches():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
    assert resolve_layers(model, ["1.*", "0"]) == ["0", "1.0", "1.1"]
    with pytest.raises(LayerNotFoundError, match="did you mean: 1.1"):
        resolve_layers(model, ["1.11"])
    with pytest.raises(InputError):
        resolve_layers(model, [])


def test_hooks_removed_when_forward_raises():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            self.lin(x)
            raise RuntimeError("boom")

    model = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        with Collector(model, ["lin"], _streams()) as col:
            col.step(Batch(input_ids=torch.zeros(2, dtype=torch.long), inputs=torch.randn(2, 3)))
    assert not model.lin._forward_hooks
    with pytest.raises(RuntimeError):
        with LayerCapture(model, ["lin"]):
            model(torch.randn(1, 3))
    assert not model.lin._forward_hooks


def test_module_running_twice_is_an_error():
    lin = nn.Linear(3, 3)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(self.lin(x))

    with pytest.raises(InputError, match="ran 2 times"):
        with Collector(Twice(), ["lin"], _streams()) as col:
            col.step(Batch(input_ids=torch.zeros(2, dtype=torch.long), inputs=torch.randn(2, 3)))


@pytest.mark.parametrize("inference", [False, True])
@pytest.mark.parametrize("inplace", [True, False])
def test_an_output_changed_in_place_after_capture_is_an_error(inplace, inference):
    """A ReLU(inplace=True) after the captured Linear overwrote what it computed: counting it
    would count the ReLU's output under the Linear's name (negative rows all 0, ties to
    neuron 0). Refused, naming the fix; capturing the ReLU itself is fine."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(inplace=inplace), nn.Linear(6, 2))
    batch = Batch(input_ids=torch.zeros(5, dtype=torch.long), inputs=torch.randn(5, 3))
    with Collector(model, ["0", "1"] if not inplace else ["1"], _streams()) as col:
        col.step(batch)
    if not inplace:
        return
    with pytest.raises(InputError, match="'0'.*changed in place.*inplace=False|'0'.*changed in "
                                         "place.*out of place"):
        # an inference tensor has no version counter: a sample of its values tells
        with Collector(model, ["0"], _streams()) as col, torch.inference_mode(inference):
            col.step(batch)


def test_samples_and_model_identity_at_any_size_and_kind():
    """Positions in integers (float32 ones rounded past the end of 2**25 elements), views without
    copies, and state_dict values that are not plain tensors (quantized, extra state)."""
    from txray_engine.capture.hooks import sampled
    from txray_engine.collect import model_identity
    big = torch.arange(1 << 25, dtype=torch.int32)
    assert sampled(big, 3).tolist() == [0, (1 << 24) - 1, (1 << 25) - 1]
    t = torch.arange(24.).reshape(4, 6).t()  # not contiguous: indexed where it lies
    assert sampled(t, 4).tolist() == t.reshape(-1)[torch.tensor([0, 7, 15, 23])].tolist()

    class Extra(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def get_extra_state(self):
            return {"note": 1}

        def set_extra_state(self, state):
            pass

    models = [Extra()]
    with warnings.catch_warnings():  # deprecated in torch, still how such models are made
        warnings.simplefilter("ignore")
        try:
            models.append(torch.ao.quantization.quantize_dynamic(
                nn.Sequential(nn.Linear(4, 4)), {nn.Linear}, dtype=torch.qint8))
        except (AttributeError, ImportError, RuntimeError):  # a torch without it
            pass
    for model in models:
        assert len(model_identity(model)["weights"]) == 16
    a, b = Extra(), Extra()
    assert model_identity(a) != model_identity(b)  # other random weights


# -- Hugging Face models from small configs (random weights, no download) --------------------------
transformers = pytest.importorskip("transformers")


def _hf(name):
    torch.manual_seed(0)
    if name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=16, n_layer=2, n_head=2)
        return transformers.GPT2LMHeadModel(cfg).eval(), "transformer.h.*.mlp.act", True
    if name == "bert":
        cfg = transformers.BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=24,
                                      max_position_embeddings=16)
        return (transformers.BertModel(cfg).eval(),
                "encoder.layer.*.intermediate.intermediate_act_fn", False)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=20,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).eval(), "model.layers.*.mlp.act_fn", True


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama"])
def test_hf_models_padding_never_counts(name):
    model, pattern, causal = _hf(name)
    ids, mask, lengths = _batch(b=3, t=9, seed=1)
    streams = _streams() + ([Stream("predicted", Vocabulary.of_size(V), "predicted")]
                            if causal else [])
    with Collector(model, [pattern], streams, k=2) as padded:
        padded.step(Batch(input_ids=ids, inputs={"input_ids": ids,
                                                 "attention_mask": mask.long()}, mask=mask))
    assert len(padded.layers) == 2  # several layers in one forward pass
    with Collector(model, [pattern], streams, k=2) as single:
        for i in range(3):
            one = ids[i:i + 1, :int(lengths[i])]
            single.step(Batch(input_ids=one, inputs={"input_ids": one}))
    for layer in padded.layers:
        a, b = padded.accumulator.layers[layer], single.accumulator.layers[layer]
        assert a.tokens == b.tokens == int(mask.sum())
        assert torch.equal(a.neuron_count, b.neuron_count)
        for s in a.streams:
            sa, sb = a.streams[s].to_stats(), b.streams[s].to_stats()
            assert (sa.count == sb.count).all() and (sa.indices == sb.indices).all()
            assert abs(sa.mass - sb.mass).max() < 1e-4


def test_hf_collector_matches_naive_on_captured_activations():
    model, _, _ = _hf("llama")
    ids, mask, _ = _batch(b=2, t=6, seed=2)
    layer = "model.layers.1.mlp.act_fn"
    with Collector(model, [layer], _streams(), k=3) as col:
        col.step(Batch(input_ids=ids, inputs={"input_ids": ids, "attention_mask": mask.long()},
                       mask=mask))
    acts = _reference_acts(model, layer, lambda: model(input_ids=ids,
                                                       attention_mask=mask.long()))
    ref = naive_sums(acts.numpy(), {"token": ids.numpy()}, 3, mask.numpy())
    assert_matches_naive(col.accumulator.layers[layer], ref, rtol=1e-9)


def test_collector_runs_the_model_in_eval_mode_and_restores_every_module():
    """Dropout left on would make the statistics random: inside the context the model is in eval
    mode, two runs over the same batches give the same sums, and each module gets its own mode
    back (here a submodule the user froze in eval stays so); eval_mode=False keeps the modes."""
    from txray_engine import same_sums
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 4))
    model.train()
    model[3].eval()
    streams = [Stream("tok", Vocabulary(["a", "b", "c"]), "input")]
    x = torch.randn(5, 7, 6, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 3, (5, 7), generator=torch.Generator().manual_seed(2))

    def run(**kw):
        with Collector(model, ["1"], streams, k=2, **kw) as col:
            assert model.training is not kw.get("eval_mode", True)
            col.step(Batch(input_ids=ids, inputs=x))
        return col.accumulator

    assert same_sums(run(), run())
    assert [m.training for m in model] == [True, True, True, False]
    assert not same_sums(run(eval_mode=False), run(eval_mode=False))  # dropout on: differs
    col = Collector(model, ["1"], streams)
    with pytest.raises(InputError, match="context manager"):
        col.step(Batch(input_ids=ids, inputs=x))


def test_outputs_flattened_to_rows_of_positions_are_counted_as_positions():
    """OPT's MLP and a mixture of experts' router take [B·T, N]: refused with a message that
    named no fix; one row per position is the batch's grid, whatever else is refused."""
    from txray_engine import Batch, Collector
    from txray_engine.errors import InputError

    class Flat(torch.nn.Module):
        def __init__(self, flat):
            super().__init__()
            torch.manual_seed(0)
            self.emb, self.fc, self.flat = torch.nn.Embedding(9, 4), torch.nn.Linear(4, 6), flat

        def forward(self, ids):
            x = self.emb(ids)
            return self.fc(x.reshape(-1, 4) if self.flat else x)

    ids = torch.randint(0, 9, (3, 5))
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, 3:] = 0
    counts = []
    for flat in (True, False):
        with Collector(Flat(flat), ["fc"], {"token": [f"w{i}" for i in range(9)]}, k=2) as col:
            col.step(Batch(ids, mask=mask))
        layer = col.accumulator.layers["fc"]
        counts.append((layer.neuron_count.tolist(), layer.neuron_mass.tolist(), layer.tokens))
    assert counts[0] == counts[1] and counts[0][2] == 13

    class Routed(Flat):
        def forward(self, ids):
            return self.fc(self.emb(ids).reshape(-1, 4)[:7])  # the rows routed to one expert

    with pytest.raises(InputError, match=r"shape \(7, 6\), not one row for each of the batch's "
                                         r"3 × 5 positions"):
        with Collector(Routed(True), ["fc"], {"token": [f"w{i}" for i in range(9)]}) as col:
            col.step(Batch(ids))
