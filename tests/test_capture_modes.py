"""Capture as models are run in practice: compiled, nested-tensor encoders, left padding,
TorchScript, one module object in many places, calls outside a step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from txray_engine import Batch, Collector, Vocabulary
from txray_engine.capture import LayerCapture
from txray_engine.errors import InputError

V = 20
VOCAB = {"token": Vocabulary.of_size(V)}


class LM(nn.Module):
    def __init__(self, inplace=False):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.lin = nn.Embedding(V, 8), nn.Linear(8, 8)
        self.act, self.head = nn.ReLU(inplace=inplace), nn.Linear(8, V)

    def forward(self, x):
        return self.head(self.act(self.lin(self.emb(x))))


class NoneFirst(nn.Module):
    """A module returning (None, its output)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return None, self.lin(x)


IDS = torch.randint(0, V, (4, 16), generator=torch.Generator().manual_seed(1))


def counts(model, layer="lin", batch=None, **kw):
    with Collector(model, [layer], VOCAB, k=3, **kw) as col:
        col.step(batch or Batch(input_ids=IDS, inputs=IDS))
    return col.accumulator.layers[col.layers[0]]


def test_a_compiled_model_is_counted_before_a_later_in_place_op():
    """Compiled, a ReLU(inplace=True) after the captured Linear ran on the captured buffer and
    was counted under the Linear's name, with no error (eager mode refuses it)."""
    eager = counts(LM(inplace=False))
    compiled = counts(torch.compile(LM(inplace=True), backend="aot_eager"), "_orig_mod.lin")
    assert torch.equal(compiled.neuron_count, eager.neuron_count)
    assert torch.allclose(compiled.neuron_mass, eager.neuron_mass)


def test_only_a_steps_forward_pass_is_counted():
    """The model called between steps (an evaluation, generation, another Collector) filled the
    hooks' lists without bound, and the next step said a module 'ran 4 times'."""
    model, batch = LM(), Batch(input_ids=IDS, inputs=IDS)
    alone = counts(model)
    with Collector(model, ["lin"], VOCAB, k=3) as a, Collector(model, ["lin"], VOCAB, k=3) as b:
        for _ in range(3):
            model(IDS)
        assert not any(a.capture.captured.values())
        a.step(batch)
        b.step(batch)
    for col in (a, b):
        assert torch.equal(col.accumulator.layers["lin"].neuron_count, alone.neuron_count)
    col = Collector(model, ["lin"], VOCAB, allow_empty=True)
    with col, pytest.raises(InputError, match="already entered"):
        with col:
            pass


def test_a_nested_tensor_encoder_counts_as_the_padded_one():
    """torch's TransformerEncoder skips the padding with nested tensors in eval mode: capture
    stopped with torch's internal error."""
    torch.manual_seed(0)

    class Encoder(nn.Module):
        def __init__(self, nested):
            super().__init__()
            self.emb = nn.Embedding(V, 8)
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(
                8, 2, 16, batch_first=True), 2, enable_nested_tensor=nested)

        def forward(self, input_ids, attention_mask):
            return self.enc(self.emb(input_ids), src_key_padding_mask=attention_mask == 0)

    nested, padded = Encoder(True), Encoder(False)
    padded.load_state_dict(nested.state_dict())
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[1, 10:], mask[2, 5:], mask[:, 14:] = 0, 0, 0  # (the longest is shorter than the batch)
    batch = Batch(input_ids=IDS, inputs={"input_ids": IDS, "attention_mask": mask})
    for layer in ("enc.layers.0", "enc.layers.1.linear1"):
        a, b = counts(nested, layer, batch), counts(padded, layer, batch)
        assert a.tokens == b.tokens == int(mask.sum())
        assert torch.equal(a.neuron_count, b.neuron_count)
        assert torch.allclose(a.neuron_mass, b.neuron_mass, atol=1e-5)


def test_left_padding_does_not_move_top_example_positions():
    """A left-padded sequence's examples were placed as many positions later as it had pads."""
    model = LM()
    ids = IDS[:2, :6].clone()
    right = torch.ones(2, 6, dtype=torch.long)
    right[1, 3:] = 0
    left = right.flip(1)
    ids_left = torch.stack([ids[0], ids[1].roll(3)])

    def examples(ids, mask):
        class Masked(nn.Module):  # (the toy model takes the ids only)
            def __init__(self):
                super().__init__()
                self.lm = model

            def forward(self, input_ids, attention_mask):
                return self.lm(input_ids)
        with Collector(Masked(), ["lm.lin"], VOCAB, k=3, examples=2) as col:
            col.step(Batch(input_ids=ids, inputs={"input_ids": ids, "attention_mask": mask}))
        return col.accumulator.layers["lm.lin"].examples

    a, b = examples(ids, right), examples(ids_left, left)
    assert torch.equal(a.value, b.value) and torch.equal(a.pos, b.pos)
    assert int(b.pos[b.doc == 1].max()) <= 2


def test_torchscript_is_refused_with_what_to_collect():
    with pytest.raises(InputError, match="TorchScript module takes no forward hooks"):
        with LayerCapture(torch.jit.script(LM()), ["lin"]):
            pass


def test_one_activation_object_in_every_layer_is_named_as_such():
    """One nn.GELU() serving all layers was listed once: its second name was 'not found', and
    the first 'ran 2 times' without saying why."""
    act = nn.GELU()

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, 8)
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), act) for _ in range(2))

        def forward(self, x):
            x = self.emb(x)
            for layer in self.layers:
                x = layer(x)
            return x

    for layer, other in (("layers.0.1", "layers.1.1"), ("layers.1.1", "layers.0.1"),
                         ("layers.*.1", "layers.1.1")):
        with pytest.raises(InputError, match=r"ran 2 times.*one GELU object that also serves "
                                             rf"as '{other}'"):
            counts(Shared(), layer)
    assert counts(Shared(), "layers.0.0").tokens == IDS.numel()


def test_a_module_list_under_two_names_is_captured_once():
    """`self.layers = self.blocks`: a pattern took each module under both names (a KeyError,
    or its outputs counted twice)."""
    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, 8)
            self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
            self.layers = self.blocks

        def forward(self, x):
            x = self.emb(x)
            for block in self.blocks:
                x = block(x)
            return x

    with Collector(Aliased(), ["*.1", "layers.0"], VOCAB, k=3) as col:
        col.step(Batch(input_ids=IDS, inputs=IDS))
    assert col.layers == ["blocks.1", "layers.0"]
    from txray_engine.prune import mask_units
    model = Aliased()
    with mask_units(model, {"layers.*": [0]}):
        assert not model(IDS)[..., 0].any()


def test_a_tuple_starting_with_none_gives_its_first_tensor():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.part = nn.Embedding(V, 8), NoneFirst()

        def forward(self, x):
            return self.part(self.emb(x))[1]

    assert counts(Model(), "part").tokens == IDS.numel()


def test_a_mask_zeroes_the_part_capture_reads():
    from txray_engine.prune import mask_units

    part = NoneFirst()
    x = torch.randn(2, 3, 8)
    with mask_units(part, {"": [1, 4]}):
        _, y = part(x)
    assert not y[..., [1, 4]].any() and y[..., 0].ne(0).all()


def test_txray_layers_names_aliases_and_torchscript(tmp_path):
    """`txray layers` listed a module under one of its names, silently, and a TorchScript model
    like any other (`collect` then refused it)."""
    from click.testing import CliRunner

    from txray_engine.cli import main
    lin = nn.Linear(4, 4)
    shared = nn.Sequential(lin, nn.ReLU(), lin, lin, lin)
    torch.save(shared, tmp_path / "shared.pt")
    res = CliRunner().invoke(main, ["layers", "--model", str(tmp_path / "shared.pt")])
    assert res.exit_code == 0 and res.output.splitlines() == [
        "0\tLinear\t(also 2, 3 and 1 more)", "1\tReLU"], res.output
    res = CliRunner().invoke(main, ["layers", "--model", str(tmp_path / "shared.pt"),
                                    "--pattern", "[3-4]"])
    assert res.output.splitlines() == ["3\tLinear\t(also 4)"], res.output  # as --layers takes it
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(4, 4))), tmp_path / "script.pt")
    res = CliRunner().invoke(main, ["layers", "--model", str(tmp_path / "script.pt")])
    assert res.exit_code == 0 and "0\tRecursiveScriptModule" in res.output
    assert "note: the model, 0: a TorchScript module takes no forward hooks" in res.output
