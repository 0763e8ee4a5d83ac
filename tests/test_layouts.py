"""Layouts: outputs [time, batch, neurons] and [batch, neurons, time] counted as the positions they
are, recognised from their modules or given; permuted shapes refused with the fix. Every case has
as many sequences as positions (or positions as neurons), where a wrong guess leaves shapes as
they are and only the numbers change."""

import pytest
import torch
from torch import nn

from naive import assert_matches_naive, naive_sums, own_hook_output
from txray_engine import Batch, Collector, Stream, Vocabulary
from txray_engine.capture import LayerCapture
from txray_engine.errors import InputError
from txray_engine.prune import mask_units

V = 13


def _streams():
    return [Stream("token", Vocabulary.of_size(V), "input")]


def _own_hook(model, layer, call):
    """The layer's raw output (its first tensor), from a hook of the test's own."""
    out = own_hook_output(model, layer, call)
    return out[0] if isinstance(out, tuple) else out


def _batch(b, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, t - 2:] = False
    return ids, mask


class ConvLM(nn.Module):
    """Channels-first convolutions over a sequence, 8 channels."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.norm = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, V)

    def forward(self, ids):
        h = self.norm(self.conv(self.emb(ids).transpose(1, 2)))
        return self.head(h.transpose(1, 2))


class TimeFirstEncoder(nn.Module):
    """torch's encoder layer at its default batch_first=False, fed [time, batch]."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 8)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)

    def forward(self, ids):
        return self.enc(self.emb(ids).transpose(0, 1)).transpose(0, 1)


class WordLM(nn.Module):
    """PyTorch's word-language-model example: takes [time, batch], returns flat log-probs."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Embedding(V, 6)
        self.rnn = nn.LSTM(6, 7)
        self.decoder = nn.Linear(7, V)

    def forward(self, ids):
        out, hidden = self.rnn(self.encoder(ids))
        return torch.log_softmax(self.decoder(out).view(-1, V), dim=1), hidden


def _check(col, layer, raw_batch_first, ids, mask, k):
    ref = naive_sums(raw_batch_first.numpy(), {"token": ids.numpy()}, k, mask.numpy())
    assert_matches_naive(col.accumulator.layers[layer], ref, rtol=1e-9)


@pytest.mark.parametrize("layer", ["conv", "norm"])
def test_channels_first_modules_are_recognised(layer):
    torch.manual_seed(0)
    model = ConvLM().eval()
    ids, mask = _batch(3, 8)  # 8 positions and 8 channels
    with Collector(model, [layer], _streams(), k=2) as col:
        col.step(Batch(input_ids=ids, mask=mask))
    raw = _own_hook(model, layer, lambda: model(ids))
    _check(col, layer, raw.transpose(1, 2), ids, mask, 2)
    assert col.capture.identity()["layouts"] == {layer: "channels_first"}


@pytest.mark.parametrize("layer", ["enc", "enc.linear1", "enc.self_attn"])
def test_modules_inside_a_batch_first_false_module_are_time_first(layer):
    torch.manual_seed(0)
    model = TimeFirstEncoder().eval()
    ids, mask = _batch(5, 5)
    with Collector(model, [layer], _streams(), k=3) as col:
        col.step(Batch(input_ids=ids, mask=mask))
    raw = _own_hook(model, layer, lambda: model(ids))
    _check(col, layer, raw.transpose(0, 1), ids, mask, 3)


def test_a_time_first_model_gets_its_inputs_time_first_and_its_logits_unflattened():
    torch.manual_seed(0)
    model = WordLM().eval()
    ids, mask = _batch(4, 4)
    streams = _streams() + [Stream("predicted", Vocabulary.of_size(V), "predicted")]
    with Collector(model, ["rnn", "decoder"], streams, k=2, time_first=True) as col:
        col.step(Batch(input_ids=ids, mask=mask))
    logits, _ = model(ids.T)
    predicted = logits.view(4, 4, V).transpose(0, 1).argmax(-1)
    for layer in ("rnn", "decoder"):
        raw = _own_hook(model, layer, lambda: model(ids.T)).transpose(0, 1)
        ref = naive_sums(raw.numpy(), {"token": ids.numpy(), "predicted": predicted.numpy()}, 2,
                         mask.numpy())
        assert_matches_naive(col.accumulator.layers[layer], ref, rtol=1e-9)
    assert col.capture.identity() == {"time_first": [], "layouts": {"decoder": "time_first"}}


def test_layouts_given_by_name_or_pattern():
    """A module that says nothing (a Linear after the model's own transpose)."""
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, 6)
            self.lin = nn.Linear(6, 6)

        def forward(self, ids):
            return self.lin(self.emb(ids).transpose(0, 1))

    torch.manual_seed(0)
    model = Inner()
    ids, mask = _batch(6, 6)
    for given in ({"lin": "time_first"}, {"l*": "time_first"}):
        with Collector(model, ["lin"], _streams(), k=2, layouts=given) as col:
            col.step(Batch(input_ids=ids, mask=mask))
        raw = _own_hook(model, "lin", lambda: model(ids))
        _check(col, "lin", raw.transpose(0, 1), ids, mask, 2)
    # the older spelling records the same identity as before layouts existed
    assert LayerCapture(model, ["lin"], time_first=["lin"]).identity() == {"time_first": ["lin"]}
    assert LayerCapture(model, ["lin"], layouts={"lin": "time_first"}).identity() == \
        {"time_first": ["lin"]}
    # a recurrent module recognised as before records nothing new
    assert LayerCapture(WordLM(), ["rnn"]).identity() == {"time_first": []}
    with pytest.raises(InputError, match="matches none of the captured layers"):
        LayerCapture(model, ["lin"], layouts={"emb.x": "time_first"})
    with pytest.raises(InputError, match="layout must be one of"):
        LayerCapture(model, ["lin"], layouts={"lin": "time-first"})


class Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


@pytest.mark.parametrize("dims,layout", [((1, 0, 2), "time_first"), ((0, 2, 1), "channels_first")])
def test_permuted_shapes_are_refused_with_the_layout_to_give(dims, layout):
    model = nn.Sequential(nn.Embedding(V, 6), Permute(*dims))
    ids, mask = _batch(3, 5)
    with pytest.raises(InputError, match=f"layouts={{'1': '{layout}'}}.*--layout 1={layout}"):
        with Collector(model, ["1"], _streams()) as col:
            col.step(Batch(input_ids=ids, mask=mask))
    with Collector(model, ["1"], _streams(), layouts={"1": layout}) as col:
        col.step(Batch(input_ids=ids, mask=mask))
    assert col.accumulator.layers["1"].tokens == int(mask.sum())


def test_time_first_logits_of_a_model_not_declared_time_first_are_refused():
    model = nn.Sequential(nn.Embedding(V, V), Permute(1, 0, 2))
    ids, mask = _batch(3, 5)
    streams = _streams() + [Stream("predicted", Vocabulary.of_size(V), "predicted")]
    with pytest.raises(InputError, match=r"logits have shape \(5, 3, 13\).*time_first=True"):
        with Collector(model, ["0"], streams) as col:
            col.step(Batch(input_ids=ids, mask=mask))


def test_masking_a_channels_first_layer_zeroes_its_channels():
    torch.manual_seed(0)
    model = ConvLM().eval()
    ids, _ = _batch(2, 8)
    with mask_units(model, {"conv": [1, 5]}):
        out = _own_hook(model, "conv", lambda: model(ids))
    assert (out[:, [1, 5]] == 0).all() and (out[:, [0, 2, 3, 4, 6, 7]] != 0).all()
    with pytest.raises(InputError, match="unit 8 is outside its 8 units"):
        with mask_units(model, {"conv": [8]}):
            model(ids)
    # a channels-first output its module does not announce: given, as to the collection
    plain = nn.Sequential(nn.Embedding(V, 6), Permute(0, 2, 1), nn.Identity())
    with mask_units(plain, {"2": [1]}, layouts={"2": "channels_first", "other.*": "time_first"}):
        out = _own_hook(plain, "2", lambda: plain(ids))
    assert (out[:, 1] == 0).all() and (out[:, [0, 2, 3, 4, 5]] != 0).all()


def test_a_partial_in_place_change_is_seen_under_inference_mode():
    """An inference tensor has no version counter; clamping its largest 1% in place changes
    few of 64 sampled values, but the sum of all."""
    class Clamped(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 50)

        def forward(self, x):
            h = self.lin(x)
            return h.clamp_(max=float(h.flatten().kthvalue(int(h.numel() * 0.99)).values))

    torch.manual_seed(0)
    batch = Batch(input_ids=torch.zeros(40, dtype=torch.long), inputs=torch.randn(40, 6))
    with pytest.raises(InputError, match="changed in place"):
        with Collector(Clamped(), ["lin"], _streams()) as col, torch.inference_mode():
            col.step(batch)


def test_a_batch_first_attribute_of_a_users_module_is_not_read_as_torchs():
    """A model that keeps batch_first=False for its own LSTM and transposes around it: its
    embedding and decoder stay batch-first (only torch's modules' flags are read)."""
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.batch_first = False
            self.emb = nn.Embedding(V, 6)
            self.rnn = nn.LSTM(6, 5)
            self.decoder = nn.Linear(5, 7)

        def forward(self, ids):
            out, _ = self.rnn(self.emb(ids).transpose(0, 1))
            return self.decoder(out.transpose(0, 1))

    torch.manual_seed(0)
    model = LM()
    ids, mask = _batch(4, 4)
    with Collector(model, ["emb", "rnn", "decoder"], _streams(), k=2) as col:
        col.step(Batch(input_ids=ids, mask=mask))
    for layer, turn in (("emb", False), ("rnn", True), ("decoder", False)):
        raw = _own_hook(model, layer, lambda: model(ids))
        _check(col, layer, raw.transpose(0, 1) if turn else raw, ids, mask, 2)


def test_a_layer_taken_in_another_layout_than_its_shape_says_names_the_way_out():
    """A layout given (or recognised) that does not fit the output's shape is refused naming
    the layout taken and the one to give."""
    model = nn.Sequential(nn.Embedding(V, 6), nn.Linear(6, 20))
    ids, mask = _batch(4, 8)
    with pytest.raises(InputError, match=r"'1': its output has shape \(4, 8, 20\), taken as "
                                         r"channels_first \(given\).*layouts=\{'1': "
                                         r"'batch_first'\}"):
        with Collector(model, ["1"], _streams(), layouts={"1": "channels_first"}) as col:
            col.step(Batch(input_ids=ids, mask=mask))
    # a time-first model run without time_first: its LSTM says it is time-first, so only the
    # model's inputs can be wrong (a layout override would run the recurrence over the batch)
    lm = WordLM()
    with pytest.raises(InputError, match=r"'rnn': .*while the module is time-first.*"
                                         r"time_first=True") as info:
        with Collector(lm, ["rnn"], _streams()) as col:
            col.step(Batch(input_ids=ids, mask=mask))
    assert "--layout" not in str(info.value)
    # a convolution that shortens the sequence: no layout fits, the positions are named
    conv = nn.Sequential(nn.Embedding(V, 4), Permute(0, 2, 1), nn.Conv1d(4, 8, 3))
    with pytest.raises(InputError, match=r"has shape \(4, 8\) but the activations have "
                                         r"\(4, 6\) positions") as info:
        with Collector(conv, ["2"], _streams()) as col:
            col.step(Batch(input_ids=ids, mask=mask))
    assert "layout" not in str(info.value)


def test_a_batch_first_model_declared_time_first_is_told_to_leave_it_out():
    """The mirror of a time-first model run without time_first: a batch-first LSTM given turned
    inputs. Overriding its layout would run the recurrence over the batch."""
    class BatchFirstLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, 6)
            self.rnn = nn.LSTM(6, 5, batch_first=True)
            self.decoder = nn.Linear(5, 7)

        def forward(self, ids):
            return self.decoder(self.rnn(self.emb(ids))[0])

    ids, mask = _batch(3, 5)
    with pytest.raises(InputError, match=r"'rnn': .*module is batch-first.*leave time_first "
                                         r"out") as info:
        with Collector(BatchFirstLM(), ["rnn", "decoder"], _streams(), time_first=True) as col:
            col.step(Batch(input_ids=ids, mask=mask))
    assert "--layout" not in str(info.value)
    # a layer taken as time-first by the model's declaration, which reads batch-first: both ways
    # out are named (here the model turns its inputs back itself)
    turned = nn.Sequential(Permute(1, 0), nn.Embedding(V, 6), nn.Linear(6, 4))
    with pytest.raises(InputError, match=r"'2': .*declared time-first.*leave time_first out.*"
                                         r"layouts=\{'2': 'batch_first'\}"):
        with Collector(turned, ["2"], _streams(), time_first=True) as col:
            col.step(Batch(input_ids=ids, mask=mask))
