"""``txray report``: one self-contained HTML file with the figures and tables of a store."""

from __future__ import annotations

import click

from ..capture.names import listed
from .base import (by_option, human_size, main, min_count_option,
                   min_neuron_count_option)


@main.command()
@click.argument("store", type=click.Path())
@click.option("--stages", "stages", multiple=True, metavar="A,B,...",
              help="Stages in order (comma-separated or repeated); consecutive pairs are "
                   "compared. Default: all, in store order.")
@click.option("--pairs", "pairs", multiple=True, metavar="A:B,C:D",
              help="Stage pairs to compare instead of consecutive stages (comma-separated or "
                   "repeated), e.g. zero-shot:seed0,zero-shot:seed1. Not with --stages.")
@click.option("--layer", "layers", multiple=True,
              help="Layer(s) to show, names or patterns such as 'model.layers.1*.mlp.act_fn' "
                   "(repeated or comma-separated). Default: all the stages share.")
@click.option("--stream", help="Stream of the Hellinger comparisons (default: token where every "
                                "stage has it, else the first stream they share).")
@click.option("--out", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="HTML file to write.")
@click.option("--max-neurons", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Neurons per layer embedded in the neuron explorer.")
@click.option("--max-points", default=3000, show_default=True, type=click.IntRange(min=10),
              help="Points per curve or scatter trace.")
@click.option("--top-features", "--features", "top_features", default=6, show_default=True, type=click.IntRange(min=1),
              help="Top features per neuron, stage and stream in the explorer.")
@by_option
@min_count_option
@min_neuron_count_option
@click.option("--title", help="Page title.")
@click.option("-q", "--quiet", is_flag=True,
              help="Print no summary on success (notes still go to stderr).")
def report(store, stages, pairs, layers, stream, out, max_neurons, max_points, top_features, by,
           min_count, min_neuron_count, title, quiet):
    """Write an offline HTML report: mass, Hellinger, length shift, POS, changed neurons and a
    neuron explorer, in one self-contained file."""
    from ..report import build_report
    from ..store.reader import read_again

    # (read again, from the store's opening, while a running collection replaces a snapshot)
    rep = read_again(lambda: build_report(
        store, stages=listed(stages) or None, layers=listed(layers) or None, out=out,
        stream=stream, max_neurons=max_neurons, max_points=max_points, top_features=top_features,
        by=by, min_count=min_count, min_neuron_count=min_neuron_count, title=title,
        pairs=listed(pairs) or None))  # "A:B" each, read by build_report
    for note in rep.notes:  # (on stderr, as compare's: -q silences the summary only)
        click.echo(f"note: {note}", err=True)
    if quiet:
        return
    pairs = ", ".join(f"{a} → {b}" for a, b in rep.pairs) or "none"
    click.echo(f"wrote {rep.path} ({human_size(rep.size)}): {rep.figures} figures; stages "
               f"{', '.join(rep.stages)}; pairs {pairs}; {len(rep.layers)} layer(s)")
