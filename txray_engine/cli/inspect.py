"""``txray info`` and ``txray neurons``: reading a store."""

from __future__ import annotations

import json

import click

from ..capture.names import expand, listed
from ..errors import InputError
from ..features.text import printable
from .base import by_option, format_features, human_size, main


@main.command()
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(store, as_json):
    """Stages, layers, streams, tokens and size on disk of a store."""
    from ..store import open_store

    data = open_store(store).info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{data['path']}  (format v{data['format_version']}, "
               f"{human_size(data['size_bytes'])} on disk)")
    if not data["stages"]:
        click.echo("  no stages")
    for name, st in data["stages"].items():
        name = printable(name)  # (a store made elsewhere: its names as they would print)
        if st["status"] == "no snapshot yet":
            click.echo(f"  stage {name}: no snapshot yet (a collection is writing its first, or "
                       f"stopped before it: --resume continues it; a stopped merge is run "
                       f"again with --overwrite)")
            continue
        # a stage collected from Python without document counts shows its units instead
        docs = (f"{st['documents']} documents" if st["documents"] else
                f"{st['units'] or 0} units")
        limit = (f" (stopped at --max-documents {st['max_documents']}: --resume with a higher "
                 f"limit continues it)" if st["status"] == "complete" and
                 st.get("corpus_done") is False else "")
        part = (f", shard {st['shard'][0]}/{st['shard'][1]} of a corpus" if st.get("shard")
                else "") + ((f", copied from {st['merged_from'][0]}" if len(st["merged_from"]) == 1
                             else f", merged from {len(st['merged_from'])} stages")
                            if st.get("merged_from") else "")
        click.echo(f"  stage {name}: {st['status']}, {st['tokens']} tokens, {docs}, "
                   f"k={st['k']}{part}{limit}")
        if st.get("other_snapshot_bytes"):
            click.echo(f"    {human_size(st['other_snapshot_bytes'])} in a snapshot besides the "
                       f"committed one: a flush being written, or one a stopped writer left "
                       f"(the stage's next writer, --resume or --overwrite, removes it)")
        streams = ", ".join(f"{s} ({v['size']})" for s, v in st["streams"].items())
        click.echo(f"    streams: {streams}")
        for layer, n in st["layers"].items():
            skipped = st["skipped_nonfinite"].get(layer)
            layout = st.get("layouts", {}).get(layer)
            more = (f", {layout}" if layout else "") + (
                f", {skipped} positions skipped (non-finite activations)" if skipped else "")
            click.echo(f"    layer {printable(layer)}: {n} neurons{more}")


@main.command()
@click.argument("store", type=click.Path())
@click.option("--stage", required=True, help="Stage to read.")
@click.option("--layer", "layer_names", multiple=True,
              help="Layer(s): names or patterns, repeated or comma-separated. Default: all.")
@click.option("--stream", "streams", multiple=True,
              help="Stream(s), repeated or comma-separated. Default: all.")
@click.option("--neuron", "neurons", multiple=True, type=int,
              help="Neuron id (repeat the option); default: the --top most often selected.")
@click.option("--top", default=3, show_default=True, type=click.IntRange(min=1),
              help="Neurons shown per layer (the most selected), unless --neuron names them.")
@click.option("--features", default=6, show_default=True, type=click.IntRange(min=1),
              help="Features shown per neuron.")
@by_option
def neurons(store, stage, layer_names, streams, neurons, top, features, by):
    """Each neuron's strongest features (share of its mass or count) per stream."""
    from ..store.reader import read_again

    click.echo("\n".join(read_again(lambda: _neuron_lines(store, stage, layer_names, streams,
                                                          neurons, top, features, by))))


def _neuron_lines(store, stage, layer_names, streams, neurons, top, features, by) -> list[str]:
    """What ``txray neurons`` prints, read from one snapshot."""
    import numpy as np

    from ..store import open_store

    out = []
    st = open_store(store).stage(stage)
    layer_names, streams = expand(listed(layer_names), st.layers), listed(streams)
    views = {lname: st.layer(lname) for lname in layer_names or st.layers}
    for sname in streams:  # check every request before printing anything
        st.vocab(sname)  # an unknown stream raises the store's message
    for lname, lv in views.items():
        bad = [n for n in neurons if not 0 <= n < lv.n_neurons]
        if bad:
            raise InputError(f"neuron {bad[0]} is not in layer {lname!r}, whose neurons are "
                             f"0 to {lv.n_neurons - 1}")
    for lname, lv in views.items():
        ids = list(neurons) or [int(i) for i in np.argsort(-lv.neuron_count, kind="stable")[:top]]
        out.append(f"{lname}: {int(lv.alive.sum())} of {lv.n_neurons} neurons alive, "
                   f"{lv.tokens} tokens")
        for n in ids:
            out.append(f"  neuron {n}: selected {int(lv.neuron_count[n])} times")
            for sname in streams or st.streams:
                out.append(f"    {sname:>9}: {format_features(lv.stream(sname), n, features, by)}")
            ex = lv.examples
            if ex is not None and "token" in st.streams:
                vocab = st.vocab("token")
                for j in range(min(3, ex["examples_value"].shape[1])):
                    if not np.isfinite(ex["examples_value"][n, j]):
                        break
                    head, word, tail = vocab.window(ex["examples_context"][n, j])
                    text = printable(f"{head}[{word}]{tail}")  # one line each, no escapes
                    out.append(f"    example {ex['examples_value'][n, j]:.3f} (document "
                               f"{ex['examples_doc'][n, j]}, token {ex['examples_pos'][n, j]}):"
                               f" {text}")
    return out
