"""Selectors, masks, structural MLP pruning (same outputs as masking) and the evaluation helper."""

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from torch import nn

from txray_engine.errors import InputError
from txray_engine.measures import NeuronTable
from txray_engine.prune import (evaluate_pruning, mask_units, prune_mlp, select_neurons,
                                summarize)


def comparison_table():
    return NeuronTable({
        "neuron": np.arange(6),
        "shared": np.array([1, 1, 1, 1, 0, 0], bool),
        "alive_a": np.array([1, 1, 1, 1, 1, 0], bool),
        "alive_b": np.array([1, 1, 1, 1, 0, 1], bool),
        "hellinger": np.array([0.5, 0.9, 0.1, 0.5, np.nan, np.nan]),
        "mass_b": np.array([3.0, 1.0, 2.0, 0.5, 0.0, 7.0]),
        "length_b": np.array([4, 2, 9, 2, 0, 1]),
    })


def test_selectors():
    t = comparison_table()
    assert select_neurons(t, "most_changed", count=2).tolist() == [0, 1]  # tie 0/3 → lower id
    assert select_neurons(t, "least_changed", count=2).tolist() == [0, 2]
    assert select_neurons(t, "most_changed", count=10).tolist() == [0, 1, 2, 3]  # only shared
    assert select_neurons(t, "lowest_mass", count=2).tolist() == [3, 4]
    assert select_neurons(t, "lowest_mass", count=2, shared_only=True).tolist() == [1, 3]
    assert select_neurons(t, "highest_mass", fraction=1 / 6).tolist() == [5]
    assert select_neurons(t, "dead", fraction=1.0).tolist() == [4]
    assert select_neurons(t, "dead", fraction=1.0, side="a").tolist() == [5]
    assert select_neurons(t, "shortest", count=3).tolist() == [1, 3, 5]  # (4 is dead in b)
    assert select_neurons(t, "longest", count=1).tolist() == [2]
    r1 = select_neurons(t, "random", count=3, seed=7)
    assert r1.tolist() == select_neurons(t, "random", count=3, seed=7).tolist() and len(r1) == 3
    assert select_neurons(t, "random", count=0).tolist() == []
    with pytest.raises(InputError, match="unknown selector"):
        select_neurons(t, "biggest", count=1)
    with pytest.raises(InputError, match="exactly one"):
        select_neurons(t, "random")
    with pytest.raises(InputError, match="no 'hellinger'"):
        select_neurons(NeuronTable({"neuron": np.arange(2), "mass": np.ones(2)}), "most_changed",
                       count=1)
    with pytest.raises(InputError, match="whole number"):
        select_neurons(t, "random", count=2.5)


def test_fractions_round_half_up():
    """5% of 10 neurons is 1 (rounding half to even made it 0: a pruning point that pruned
    nothing), 15% is 2, 25% is 3, 35% is 4."""
    from txray_engine.prune.select import how_many
    assert [how_many(10, None, f) for f in (0.05, 0.15, 0.25, 0.35, 0.0, 1.0)] == \
        [1, 2, 3, 4, 0, 10]
    assert how_many(7, None, 0.5) == 4 and how_many(6, None, 1 / 6) == 1
    # 0.29 * 50 is 14.499999999999998 in floating point: it was 14
    assert how_many(50, None, 0.29) == 15 and how_many(100, None, 0.145) == 15


def test_random_draws_each_layer_its_own_ids():
    """One integer seed gave every layer of one width the same ids: a random baseline over
    several layers was correlated. One generator over the layers draws each its own; the first
    layer's ids are those of the integer seed."""
    t = NeuronTable({"neuron": np.arange(40), "mass": np.ones(40)})
    rng = np.random.default_rng(3)
    first, second = (select_neurons(t, "random", count=10, seed=rng) for _ in range(2))
    assert first.tolist() == select_neurons(t, "random", count=10, seed=3).tolist()
    assert first.tolist() != second.tolist()
    for bad in (-1, 1.5, True, None):
        with pytest.raises(InputError, match="seed must be a whole number"):
            select_neurons(t, "random", count=1, seed=bad)


def test_select_neurons_takes_a_comparison(two_stages):
    from txray_engine import open_store
    from txray_engine.measures import compare_streams
    st = open_store(two_stages)
    cmp = compare_streams(st.stage("text").layer("lstm").stream("token"),
                          st.stage("reviews").layer("lstm").stream("token"))
    assert select_neurons(cmp, "most_changed", count=3).tolist() == \
        select_neurons(cmp.table(), "most_changed", count=3).tolist()


def test_mask_zeroes_units_and_is_removable():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(5, 4)
    base = model(x)
    seen = []
    with mask_units(model, {"1": [0, 3]}):
        h = model[1].register_forward_hook(lambda m, i, o: seen.append(o))  # runs after the mask
        masked = model(x)
    h.remove()
    assert torch.all(seen[0][:, [0, 3]] == 0) and seen[0].abs().sum() > 0
    assert not torch.allclose(masked, base)
    assert torch.equal(model(x), base)
    assert not model[1]._forward_hooks


def test_a_collection_sees_the_mask_wherever_it_was_entered():
    """The mask's hook came after a Collector's entered first: the collection saw the output
    before masking, and which it saw depended on the order of the two `with`s."""
    from txray_engine import Batch, Collector

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 6), nn.ReLU())
    ids = torch.randint(0, 5, (3, 7))
    vocab = {"token": [f"w{i}" for i in range(5)]}

    def counts(mask_first):
        with mask_units(model, {"2": [0, 1, 2]}) if mask_first else nullcontext():
            with Collector(model, ["2"], vocab, k=1) as col:
                with nullcontext() if mask_first else mask_units(model, {"2": [0, 1, 2]}):
                    col.step(Batch(ids))
        return col.accumulator.layers["2"].neuron_count.tolist()

    outside, inside = counts(True), counts(False)
    assert outside == inside and outside[:3] == [0, 0, 0] and sum(outside) == 21


def test_mask_pattern_and_unit_checks():
    """A pattern masks the units in every module it matches; ids past a layer's width fail at
    the forward pass with the layer named, negative ids when the mask is made (they would mask
    from the end), and nothing stays hooked."""
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU())
    seen = []
    for m in (model[1], model[3]):
        m.register_forward_hook(lambda m, i, o: seen.append(o))
    with mask_units(model, {"[13]": [2]}):
        model(torch.randn(3, 4))
    assert all(torch.all(o[:, 2] == 0) for o in seen) and len(seen) == 2
    with mask_units(model, {"1": [6]}):
        with pytest.raises(InputError, match=r"layer '1': unit 6 is outside its 6 units"):
            model(torch.randn(3, 4))
    with pytest.raises(InputError, match="0 or more, got -1"):
        mask_units(model, {"1": [0, -1]})
    assert len(model[1]._forward_hooks) == len(model[3]._forward_hooks) == 1  # the test's own


@pytest.mark.parametrize("units", [[0.5], [1.9], ["1"], [True], [float("nan")], [2**63],
                                   [2**70], [1e300], [[1, 2], [3]], [[1, 2], [3, 4]]])
def test_unit_ids_are_integers(units):
    """Ids that are not integers are refused, by masks and by structural pruning alike: 0.5 and
    True were cut down to units 0 and 1 (from a float column, or a bool selection by mistake)."""
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3))
    message = "unit ids are integers|past any layer's width|a flat list of integer ids"
    with pytest.raises(InputError, match=message):
        mask_units(model, {"1": units})
    with pytest.raises(InputError, match=message):
        prune_mlp(model, "1", units)
    assert model[0].weight.shape == (6, 4) and not model[1]._forward_hooks


@pytest.mark.parametrize("mask,match", [
    ({"store": "s", "layers": ["1"], "layer_sizes": {}}, "layers must be a dict"),
    ({"layers": {"1": [0]}, "layer_sizes": {"1": "6"}}, "layer_sizes must map layers to their "
                                                        "widths .integers."),
    ({1: [0]}, "keys that are not names"),
])
def test_a_mask_file_edited_by_hand_is_read_as_written(mask, match):
    """A mask file's 'layers' as a list masked a layer named 'store'; a width written as "6"
    said 'made for 6 units, and this layer has 6'."""
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3))
    with pytest.raises(InputError, match=match):
        mask_units(model, mask)
    assert not model[1]._forward_hooks


def test_unit_ids_of_any_integer_kind():
    """Integral floats (a pandas column), numpy and torch integers name the same units."""
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3))
    x = torch.randn(5, 4)
    with torch.no_grad():
        with mask_units(model, {"1": [2, 4]}):
            want = model(x)
        for units in ([2.0, 4.0], np.array([4, 2], dtype=np.int32), torch.tensor([2, 4]),
                      (u for u in (2, 4))):
            with mask_units(model, {"1": units}):
                torch.testing.assert_close(model(x), want)
        prune_mlp(model, "1", np.array([2.0, 4.0]))
        torch.testing.assert_close(model(x), want)


def test_mask_recurrent_tuple_output():
    lstm = nn.LSTM(3, 5, batch_first=True)
    model = nn.Sequential()
    model.add_module("lstm", lstm)
    out = []
    with mask_units(model, {"lstm": [1, 4]}):
        lstm.register_forward_hook(lambda m, i, o: out.append(o[0]))
        model(torch.randn(2, 7, 3))
    assert torch.all(out[0][..., [1, 4]] == 0) and out[0][..., 0].abs().sum() > 0


class _DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return {"skipped": None, "hidden": self.lin(x), "other": x}


def test_mask_dict_output_zeroes_the_field_capture_takes():
    from txray_engine.capture.hooks import LayerCapture
    model = nn.Sequential()
    model.add_module("d", _DictOut())
    x = torch.randn(2, 5, 4)
    with mask_units(model, {"d": [1]}), LayerCapture(model, ["d"]) as cap:
        out = model(x)
        captured = cap.take()["d"]
    assert torch.all(out["hidden"][..., 1] == 0) and out["hidden"][..., 0].abs().sum() > 0
    assert torch.equal(captured, out["hidden"]) and torch.equal(out["other"], x)


transformers = pytest.importorskip("transformers")


def _models():
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=30, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)).eval()
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=30, n_positions=32, n_embd=16, n_layer=2, n_head=2)).eval()
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=32)).eval()
    return [(llama, "model.layers.1.mlp.act_fn", 24), (gpt2, "transformer.h.0.mlp.act", 64),
            (bert, "encoder.layer.1.intermediate.intermediate_act_fn", 24)]


@pytest.mark.parametrize("case", range(3))
def test_structural_pruning_equals_masking(case):
    model, layer, width = _models()[case]
    ids = torch.randint(0, 30, (2, 9))
    units = [0, 5, 7, width - 1]
    with torch.no_grad(), mask_units(model, {layer: units}):
        masked = model(input_ids=ids)[0]
    info = prune_mlp(model, layer, units)
    assert info == {"layer": layer, "before": width, "after": width - 4}
    with torch.no_grad():
        pruned = model(input_ids=ids)[0]
    torch.testing.assert_close(pruned, masked, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_structural_pruning_sequential_and_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3))
    x = torch.randn(6, 4)
    with torch.no_grad(), mask_units(model, {"1": [2, 3]}):
        masked = model(x)
    prune_mlp(model, "1", [2, 3])
    assert model[0].weight.shape == (6, 4) and model[2].weight.shape == (3, 6)
    torch.testing.assert_close(model(x), masked)
    with pytest.raises(InputError, match="recognised MLP"):
        prune_mlp(nn.Sequential(nn.ReLU()), "0", [0])
    with pytest.raises(InputError, match="all 6 units"):
        prune_mlp(model, "1", range(6))


@pytest.mark.parametrize("modules,layer,width", [
    ([nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)], "0", None),  # the input projection
    ([nn.Linear(4, 8), nn.GELU(), nn.Dropout(0.1), nn.Linear(8, 3)], "0", None),
    ([nn.Linear(4, 8), nn.GELU(), nn.Dropout(0.1), nn.Linear(8, 3)], "1", None),
    ([nn.Linear(4, 8), nn.GELU(), nn.Dropout(0.1), nn.Linear(8, 3)], "2", 8),  # a dropout
    ([nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)], "2", None),
    ([nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 3)], "1", None),  # sigmoid(0) != 0: its output
])
def test_structural_pruning_of_sequential_mlps_equals_masking(modules, layer, width):
    """Linear, then modules that keep each unit in place (activation, dropout), then Linear:
    any of the first ones outputs the intermediate units."""
    torch.manual_seed(0)
    model = nn.Sequential(*modules).eval()
    x = torch.randn(6, 4)
    with torch.no_grad(), mask_units(model, {layer: [1, 4]}):
        masked = model(x)
    info = prune_mlp(model, layer, [1, 4], width=width)
    assert info["after"] == info["before"] - 2
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("modules,layer,message", [
    ([nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)], "", "the MLP module itself"),
    ([nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)], "2", "output units"),
    ([nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 3)], "0", r"Sigmoid\) does not map 0 to 0"),
    ([nn.Linear(4, 8), nn.Softmax(-1), nn.Linear(8, 3)], "1", "recognised MLP"),
])
def test_structural_pruning_refuses_what_masking_would_not_match(modules, layer, message):
    """A Sequential MLP itself and its output projection hold output units; masking a sigmoid's
    input leaves sigmoid(0) = 0.5 flowing on, which no removal keeps; a softmax mixes units."""
    model = nn.Sequential(nn.Identity(), nn.Sequential(*modules))
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(InputError, match=message):
        prune_mlp(model, "1" + (f".{layer}" if layer else ""), [1, 2])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("case,layer", [
    (0, "model.layers.1.mlp"), (0, "model.layers.1.mlp.down_proj"), (1, "transformer.h.0.mlp"),
    (1, "transformer.h.0.mlp.c_proj"), (2, "encoder.layer.1"), (2, "encoder.layer.1.output"),
    (2, "encoder.layer.1.output.dense"), (2, "encoder.layer.1.output.LayerNorm")])
def test_structural_pruning_refuses_layers_of_the_mlps_output(case, layer):
    """Such a layer's units are the MLP's output units: pruning intermediate units by their ids
    removed other units than a mask of the same layer zeroes. Refused; the model is unchanged."""
    model = _models()[case][0]
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(InputError, match="output units"):
        prune_mlp(model, layer, [1, 2])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_structural_pruning_checks_the_collected_width():
    model, layer, width = _models()[1]
    with pytest.raises(InputError, match="collected with 16 units"):
        prune_mlp(model, "transformer.h.0.mlp.dropout", [1], width=16)
    with pytest.raises(InputError, match="neither an input projection nor an activation"):
        prune_mlp(model, "transformer.h.0.mlp.dropout", [1])  # its width unknown: refused
    assert prune_mlp(model, layer, [1], width=width)["after"] == width - 1


def test_evaluate_pruning_table():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1))
    x = torch.randn(20, 4)
    metric = lambda m: float(m(x).sum().detach())  # noqa: E731
    t = comparison_table()
    rows = evaluate_pruning(model, {"1": t}, metric, ["most_changed", "random"], [0.0, 0.5],
                            seeds=[0, 1, 2])
    assert len(rows) == 2 + 6
    base = metric(model)
    assert all(r["metric"] == pytest.approx(base) for r in rows if r["fraction"] == 0.0)
    assert {r["pruned"] for r in rows if r["fraction"] == 0.5 and r["selector"] == "random"} == {3}
    summary = summarize(rows)
    rnd = [s for s in summary if s["selector"] == "random" and s["fraction"] == 0.5][0]
    random_metrics = [r["metric"] for r in rows if r["fraction"] == 0.5 and r["selector"] == "random"]
    assert rnd["runs"] == 3 and len(set(random_metrics)) > 1  # three seeds, three masks
    assert rnd["std"] == pytest.approx(np.std(random_metrics, ddof=1))
    assert (rnd["pruned_min"], rnd["pruned_max"]) == (3, 3)
    once = evaluate_pruning(model, {"1": t}, metric, (s for s in ["most_changed", "random"]),
                            (f for f in [0.0, 0.5]), seeds=(s for s in [0, 1, 2]))
    assert once == rows  # generators, gone over once per selector before
    assert len(evaluate_pruning(model, {"1": t}, metric, "random", [0.5], seeds=[0, 1])) == 2


def test_mask_model_output_of_a_whole_encoder():
    """A ModelOutput (BERT's encoder): its first field, the one capture takes, is zeroed."""
    from txray_engine.capture.hooks import LayerCapture
    model = _models()[2][0]
    ids = torch.randint(0, 30, (2, 7))
    with torch.no_grad():
        plain = model(input_ids=ids).last_hidden_state
    with torch.no_grad(), mask_units(model, {"encoder": [0, 3]}), \
            LayerCapture(model, ["encoder"]) as cap:
        out = model(input_ids=ids)
        captured = cap.take()["encoder"]
    assert torch.all(out.last_hidden_state[..., [0, 3]] == 0)
    assert torch.equal(captured, out.last_hidden_state)
    torch.testing.assert_close(out.last_hidden_state[..., 1], plain[..., 1])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_masking_a_recurrent_layer_masks_its_final_state(bidirectional):
    """A classifier reading h_n[-1] was not pruned at all: its logits were bit-identical with
    every unit of the LSTM masked."""
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 5, num_layers=2, batch_first=True, bidirectional=bidirectional)
    x = torch.randn(3, 6, 4)
    out, (h, c) = lstm(x)
    units = [1, 3] + ([7] if bidirectional else [])
    with mask_units(nn.ModuleDict({"lstm": lstm}), {"lstm": units}):
        masked, (hm, cm) = lstm(x)
    assert torch.all(masked[..., units] == 0) and torch.equal(cm, c)
    want = h.clone()
    d = 2 if bidirectional else 1
    for u in units:
        want[h.shape[0] - d + u // 5, :, u % 5] = 0
    assert torch.equal(hm, want) and not torch.equal(hm, h)
    # a classifier head on h_n[-1] now sees the mask
    head = nn.Linear(5, 2)
    assert not torch.equal(head(hm[-1]), head(h[-1]))


def test_a_mask_file_applies_whole_and_checks_its_sizes():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(5, 4)
    doc = {"layers": {"1": [0, 2]}, "layer_sizes": {"1": 6}, "layouts": {}}
    with mask_units(model, doc):
        seen = model[:2](x)
    assert torch.all(seen[:, [0, 2]] == 0) and seen.abs().sum() > 0
    with pytest.raises(InputError, match="made for 8 units, and this layer has 6"):
        with mask_units(model, {**doc, "layer_sizes": {"1": 8}}):
            model(x)
    assert not model[1]._forward_hooks
