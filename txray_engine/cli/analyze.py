"""``txray compare`` and ``txray prune``: stages against each other, and neurons to remove."""

from __future__ import annotations

import json

import click
import numpy as np

from ..capture.names import expand, listed
from ..errors import InputError
from ..store.outputs import output_path, write_replacing
from .base import (by_option, format_features, gguf_option, main, min_count_option,
                   min_neuron_count_option)

TABLE_COLUMNS = ["neuron", "hellinger", "selected_a", "selected_b", "hellinger_length", "length_a",
                 "length_b", "length_shift", "mass_shift", "compat_hellinger"]


def _pairs(stage_a, stage_b, layers, streams):
    common_layers = [layer for layer in stage_a.layers if layer in stage_b.layers]
    common_streams = [s for s in stage_a.streams if s in stage_b.streams]
    layers, streams = expand(listed(layers), common_layers), listed(streams)
    for name, have, common in (("layer", layers, common_layers),
                               ("stream", streams, common_streams)):
        missing = [x for x in have if x not in common]
        if missing:
            raise InputError(f"{name}(s) {missing} are not in both stages; common: {common}")
        if not common:
            raise InputError(f"the two stages share no {name}: compare stages of one model "
                             f"(`txray info STORE` lists each stage's layers and streams)")
    return [(lay, s) for lay in (layers or common_layers) for s in (streams or common_streams)]


def _compare_lines(s: dict, cmp, va, vb, stage_a: str, stage_b: str, min_neuron_count: int,
                   top: int, features: int, by: str) -> list[str]:
    """What ``txray compare`` prints for one layer and stream."""
    alive = (f" (alive: selected at least {min_neuron_count} times)"
             if min_neuron_count > 1 else "")
    lines = [f"{s['layer']} / {s['stream']}: {s['neurons']} neurons, {s['shared']} shared, "
             f"{s['only_a']} only in {stage_a}, {s['only_b']} only in {stage_b}, "
             f"{s['dead_both']} dead in both{alive}"]
    if s["hellinger_mean"] is not None:
        lines.append(f"  Hellinger mean {s['hellinger_mean']:.4f}, median "
                     f"{s['hellinger_median']:.4f}; mean length shift "
                     f"{s['length_shift_mean']:+.2f}")
    if s["shared_without_distribution"]:
        lines.append(f"  {s['shared_without_distribution']} shared neuron(s) without a distance: "
                     f"no cell with mass in one stage"
                     + (f" (cells seen fewer than --min-count {s['min_count']} times are left out)"
                        if s.get("min_count", 1) > 1 else ""))
    if s["unaligned_a"] or s["unaligned_b"]:
        lines.append(f"  vocabularies differ: {s['unaligned_a']} features of {stage_a} and "
                     f"{s['unaligned_b']} of {stage_b} have no counterpart")
    table = cmp.table()
    for title, part in zip(("most changed", "least changed"), map(table.take, cmp.extremes(top))):
        if not len(part):
            continue
        lines.append(f"  {title}:")
        lines.append("    " + part.format(TABLE_COLUMNS).replace("\n", "\n    "))
        for nid in part["neuron"]:
            lines.append(f"    neuron {nid}: {stage_a}: "
                         f"{format_features(va, int(nid), features, by)}")
            lines.append(f"    {' ' * len(f'neuron {nid}')}  {stage_b}: "
                         f"{format_features(vb, int(nid), features, by)}")
    return lines


@main.command()
@click.argument("store", type=click.Path())
@click.argument("stage_a")
@click.argument("stage_b")
@click.option("--layer", "layers", multiple=True,
              help="Layer(s): names or patterns such as 'model.layers.1*.mlp.act_fn', repeated or "
                   "comma-separated. Default: all common ones.")
@click.option("--stream", "streams", multiple=True,
              help="Stream(s), repeated or comma-separated. Default: all common ones.")
@by_option
@min_count_option
@min_neuron_count_option
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=0),
              help="Most and least changed neurons shown per layer and stream.")
@click.option("--features", default=4, show_default=True, type=click.IntRange(min=1),
              help="Top features shown per listed neuron and stage.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
              help="Write the full neuron table (all layers and streams) to this CSV file "
                   "(a name starting with = + - @ gets a leading ', so that spreadsheets "
                   "show it as text).")
@click.option("--json", "as_json", is_flag=True,
              help="Print summaries and the neuron table as JSON.")
def compare(store, stage_a, stage_b, layers, streams, by, min_count, min_neuron_count, top,
            features, csv_path, as_json):
    """Compare two stages: shared/dead neurons, Hellinger distances, length and mass shifts."""
    from ..measures import NeuronTable, compare_streams
    from ..store import open_store
    from ..store.reader import read_again
    from ..store.settings import settings_note

    if stage_a == stage_b:
        raise click.UsageError(f"both stages are {stage_a!r}: compare two different stages")
    if csv_path:  # before the work: a path that cannot be written fails at once
        output_path(csv_path, "table")

    def read():  # everything read before anything is printed: a live collection may replace
        # the stage's snapshot under a reader, who then opens it again (read_again)
        st = open_store(store)
        a, b = st.stage(stage_a), st.stage(stage_b)
        summaries, tables, lines = [], [], []
        for layer, stream in _pairs(a, b, layers, streams):
            va, vb = a.layer(layer).stream(stream), b.layer(layer).stream(stream)
            cmp = compare_streams(va, vb, by=by, min_count=min_count,
                                  min_neuron_count=min_neuron_count)
            summaries.append({"layer": layer, "stream": stream, **cmp.summary()})
            t = cmp.table()
            n = len(t)
            tables.append(NeuronTable({"layer": np.array([layer] * n),
                                       "stream": np.array([stream] * n), **t.columns}))
            if not as_json:
                lines += _compare_lines(summaries[-1], cmp, va, vb, stage_a, stage_b,
                                        min_neuron_count, top, features, by)
        return summaries, tables, lines, (a, b)

    summaries, tables, lines, stages = read_again(read)
    for line in lines:
        click.echo(line)
    _note_unfinished(*stages)
    apart = settings_note(stage_a, stages[0].meta, stage_b, stages[1].meta)
    if apart:
        click.echo(f"note: {apart}", err=True)
    full = NeuronTable({k: np.concatenate([t[k] for t in tables]) for k in tables[0].names})
    if csv_path:
        full.to_csv(output_path(csv_path, "table", create=True))
        if not as_json:
            click.echo(f"wrote {len(full)} rows to {csv_path}")
    if as_json:
        click.echo(json.dumps({"stage_a": stage_a, "stage_b": stage_b, "summaries": summaries,
                               "neurons": full.records()}))


def _note_unfinished(*stages) -> None:
    """A note on stderr for each stage a collection has not completed."""
    for s in stages:
        if s is not None and s.status != "complete":
            click.echo(f"note: stage {s.name!r} is {s.status} ({s.tokens} tokens so far): its "
                       f"numbers may change when it is complete", err=True)


#: The neurons a selector can choose from, as ``txray prune`` names them when it finds fewer than
#: asked.
POOLS = {"most_changed": "shared with a distance (cells seen --min-count times, with mass)",
         "least_changed": "shared with a distance (cells seen --min-count times, with mass)",
         "dead": "dead", "random": "in the pool", "lowest_mass": "in the pool",
         "highest_mass": "in the pool", "shortest": "alive", "longest": "alive"}


@main.command()
@click.argument("store", type=click.Path())
@click.option("--stage", required=True, help="Stage whose neurons are ranked (B of a comparison).")
@click.option("--against", help="Stage A: rank by the change from A to --stage (Hellinger).")
@click.option("--layer", "layers", required=True, multiple=True,
              help="Layer(s) to prune: names or patterns, repeated or comma-separated.")
@click.option("--stream", default="token", show_default=True, help="Stream of the measures.")
@click.option("--selector", required=True,
              type=click.Choice(["most_changed", "least_changed", "lowest_mass", "highest_mass",
                                 "dead", "shortest", "longest", "random"]))
@click.option("--fraction", type=click.FloatRange(0, 1), help="Fraction of each layer's neurons.")
@click.option("--count", type=click.IntRange(min=0), help="Neurons per layer.")
@click.option("--shared-only", is_flag=True, help="Only neurons alive in both stages.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of the random selector (one stream over the layers, in the order "
                   "given: each layer its own ids).")
@by_option
@min_count_option
@min_neuron_count_option
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Mask file to write (JSON; 'layers': layer → neuron ids, and how they were "
                   "selected).")
@click.option("--model", "model_spec", help="Model to prune structurally (as for collect).")
@gguf_option
@click.option("--save-pruned", type=click.Path(dir_okay=False),
              help="Write the structurally pruned model here (torch.save of the whole module).")
def prune(store, stage, against, layers, stream, selector, fraction, count, shared_only, seed,
          by, min_count, min_neuron_count, out, model_spec, gguf_file, save_pruned):
    """Select neurons to prune from a store; write a mask file (and a pruned model copy).

    The ranking is what `txray compare` shows with the same --by, --min-count and
    --min-neuron-count (or, without --against, of the stage alone)."""
    import numpy as np

    from ..measures import compare_streams, stage_table
    from ..prune import select_neurons
    from ..prune.select import how_many
    from ..store import open_store

    if (fraction is None) == (count is None):
        raise click.UsageError("give exactly one of --fraction or --count")
    if bool(model_spec) != bool(save_pruned):
        raise click.UsageError("--model and --save-pruned go together")
    if selector in ("most_changed", "least_changed") and not against:
        raise click.UsageError(f"--selector {selector} compares two stages: add --against STAGE")
    if shared_only and not against:
        raise click.UsageError("--shared-only keeps neurons alive in both stages: add --against "
                               "STAGE")
    if against is not None and against == stage:
        raise click.UsageError(f"--against names --stage itself ({stage!r}): rank by the change "
                               f"from another stage")
    output_path(out, "mask file")  # before the work: paths that cannot be written fail at once
    if save_pruned:
        output_path(save_pruned, "pruned model")
    st = open_store(store)
    b = st.stage(stage)
    a = st.stage(against) if against else None
    selection, sizes = {}, {}
    rng = np.random.default_rng(seed)  # (the first layer's ids as select_neurons(seed=seed))
    layers = expand(listed(layers), b.layers)
    for layer in layers:
        vb = b.layer(layer).stream(stream)
        if a is not None:
            table = compare_streams(a.layer(layer).stream(stream), vb, by=by, min_count=min_count,
                                    min_neuron_count=min_neuron_count).table()
        else:
            table = stage_table(vb.stats, b.layer(layer).neuron_count, min_count, by,
                                min_neuron_count)
        units = select_neurons(table, selector, count=count, fraction=fraction,
                               shared_only=shared_only, seed=rng)
        selection[layer] = [int(u) for u in units]
        sizes[layer] = b.layer(layer).n_neurons
    doc = {"store": str(store), "stage": stage, "against": against, "stream": stream,
           "selector": selector, "fraction": fraction, "count": count, "seed": seed,
           "shared_only": shared_only, "by": by, "min_count": min_count,
           "min_neuron_count": min_neuron_count,
           "stage_status": {s.name: s.status for s in (a, b) if s is not None},
           "layers": selection, "layer_sizes": sizes,
           # how the collection read each layer (mask_units(model, layers, layouts=...)): a
           # channels-first layer's units are its axis 1
           "layouts": {layer: lay for layer, lay in b.layouts.items() if layer in selection}}
    shrunk = {}
    if model_spec:  # prune in memory first: a model that cannot be pruned leaves no file behind
        from ..collect.models import load_model
        from ..prune import prune_mlp

        loaded = load_model(model_spec, gguf_file, require_tokenizer=False)
        model = loaded.model
        stored = (b.meta.get("model") or {}) if isinstance(b.meta.get("model"), dict) else {}
        if stored.get("weights") not in (None, loaded.identity["weights"]):
            click.echo(f"note: --model's weights ({loaded.identity['weights']}) are not those "
                       f"stage {stage!r} was collected with ({stored['weights']}): its neurons "
                       f"are ranked from another model", err=True)
        shrunk = {layer: prune_mlp(model, layer, units, width=sizes[layer])
                  for layer, units in selection.items()}
    if model_spec:  # the model first: a model that cannot be written leaves no mask behind
        _save_model(model, output_path(save_pruned, "pruned model", create=True))
    write_replacing(output_path(out, "mask file", create=True),
                    lambda tmp: tmp.write_text(json.dumps(doc, indent=1)), "mask file")
    for layer, units in selection.items():
        asked = how_many(sizes[layer], count, fraction)
        more = (f"; --count {count} is more than the layer has" if asked > sizes[layer] else
                f"; {asked} asked, but only these are {POOLS.get(selector, 'alive')}"
                if len(units) < asked else "")
        click.echo(f"{layer}: {len(units)} of {sizes[layer]} neurons selected ({selector}{more})")
    _note_unfinished(a, b)
    click.echo(f"wrote mask to {out}")
    for layer, info in shrunk.items():
        click.echo(f"{layer}: MLP width {info['before']} → {info['after']}")
    if model_spec:
        click.echo(f"wrote pruned model to {save_pruned}")


def _save_model(model, path) -> None:
    """``torch.save`` of the whole module, never a half-written file."""
    import torch

    write_replacing(path, lambda tmp: torch.save(model, tmp), "pruned model",
                    (OSError, RuntimeError))
