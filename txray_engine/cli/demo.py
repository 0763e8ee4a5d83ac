"""``txray demo``: the TX-Ray paper pipeline end to end, offline."""

from __future__ import annotations

import json

import click

from .base import main


@main.command()
@click.option("--config", "config_name", type=click.Choice(["tiny", "small", "full"]),
              default="small", show_default=True,
              help="tiny: CI check; small: minutes on a CPU; full: the paper's LSTM on all data.")
@click.option("--out", default="out/demo", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (store, results.json, checkpoints, caches).")
@click.option("--reviews-cache", default=".cache/reviews", show_default=True,
              type=click.Path(file_okay=False),
              help="Where the Pang & Lee review files are (fetched there when missing).")
@click.option("--seeds", help="Comma-separated fine-tuning seeds (default: the configuration's).")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--json", "as_json", is_flag=True, help="Print the results JSON instead.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or progress lines.")
def demo(config_name, out, reviews_cache, seeds, device, as_json, quiet):
    """Pretrain an LSTM LM on Wikipedia, transfer it zero-shot to movie reviews, fine-tune it on
    their polarity, and prune neurons guided by the measures; prints a summary per RQ."""
    import torch

    from ..collect.models import check_device
    from ..corpora import fetch_reviews
    from ..demo import format_summary, preset, run_demo

    cfg = preset(config_name)
    if seeds:
        try:
            cfg = cfg.with_(seeds=tuple(int(s) for s in seeds.split(",")))
        except ValueError:
            raise click.BadParameter("use integers separated by commas", param_hint="--seeds")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    reviews = fetch_reviews(reviews_cache)
    log = (lambda msg: None) if as_json or quiet else (lambda msg: click.echo(msg, err=True))
    results = run_demo(cfg, out, reviews, device, log, quiet=quiet or as_json)
    if as_json:
        click.echo(json.dumps(results, default=str))
    else:
        click.echo(format_summary(results))
        click.echo(f"\nstore: {out}/store.zarr   results: {out}/results.json   "
                   f"report: {out}/report.html")
