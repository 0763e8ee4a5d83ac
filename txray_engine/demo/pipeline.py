"""The TX-Ray pipeline end to end: pretraining (RQ1), zero-shot transfer (RQ2), supervised
fine-tuning (RQ3) and measure-guided pruning, with every stage collected into one store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..collect.collector import Collector
from ..errors import InputError
from ..features.pos import POS_VOCAB
from ..features.streams import Batch, Stream
from ..measures import compare_streams, feature_group_mass, stage_table
from ..prune import evaluate_pruning, summarize
from ..store import open_store
from .config import DemoConfig
from .data import DemoData, Docs, load_data
from .halves import across, floor, halves
from .train import accuracy, finetune, review_batches, train_lm

LAYER = "lstm"


def windows(docs: Docs, n: int) -> Docs:
    """Cut long documents into windows of at most ``n`` tokens."""
    ids, pos = [], []
    for d, p in zip(docs.ids, docs.pos):
        for i in range(0, len(d), n):
            ids.append(d[i:i + n])
            pos.append(p[i:i + n])
    return Docs(ids, pos)


def collect_stage(model, docs: Docs, streams, store, stage: str | None, cfg, pad: int, device,
                  identity: dict | None = None):
    """Collect ``docs`` into ``stage`` of ``store`` (or, with ``store=None``, only in memory);
    returns the accumulator."""
    with Collector(model, [LAYER], streams, cfg.k, store=store, stage=stage, mode="overwrite",
                   identity=identity, flush_every=1e9, device=device) as col:
        for ids, mask, labels, pos in review_batches(docs, 64, pad):
            ids, mask = ids.to(device), mask.to(device)
            col.step(Batch(input_ids=ids, inputs={"input_ids": ids, "attention_mask": mask},
                           mask=mask, labels=None if labels is None else labels.to(device),
                           features={"pos": pos.to(device)}), documents=ids.shape[0])
    return col.accumulator


def _summary(cmp) -> dict:
    s = cmp.summary()
    return {k: s[k] for k in ("shared", "only_a", "only_b", "dead_both", "hellinger_mean",
                              "hellinger_median", "length_shift_mean", "mass_a", "mass_b")}


def _compare(store, a: str, b: str, stream: str):
    st = open_store(store)
    return compare_streams(st.stage(a).layer(LAYER).stream(stream),
                           st.stage(b).layer(LAYER).stream(stream))


def _pos_mass(store, stage: str) -> dict:
    g = feature_group_mass(open_store(store).stage(stage).layer(LAYER).stream("pos").stats)
    return {tag: {"frequency_share": float(g["frequency_share"][i]),
                  "mass_share": float(g["mass_share"][i])}
            for i, tag in enumerate(POS_VOCAB) if g["frequency"][i] > 0}


#: The stages a run writes: the language model at an epoch, zero-shot on the reviews, and a
#: fine-tuned classifier of a seed.
WIKI, ZERO_SHOT, SUPERVISED = "wiki-epoch{}", "reviews-zero-shot", "reviews-supervised-s{}"


def _check_earlier_run(store: Path, stages: list[str]) -> None:
    """Refuse a store of an earlier run that holds stages this one does not write (other seeds
    or epochs): they would stay beside this run's, of other models, and be compared with them."""
    if not store.exists():
        return
    stale = [s for s in open_store(store).stages if s not in stages]
    if stale:
        raise InputError(f"{str(store.parent)!r} holds a demo run with stages this run does not "
                         f"write ({', '.join(stale)}): choose another --out, or remove that "
                         f"folder first")


def run_demo(cfg: DemoConfig, out_dir, reviews_dir, device: str = "cpu",
             log: Callable = print, quiet: bool = False) -> dict:
    """Run everything; writes ``store.zarr``, ``results.json`` and checkpoints into ``out_dir``."""
    t0 = time.monotonic()
    out = Path(out_dir)
    store = out / "store.zarr"
    epochs = sorted({1, (cfg.lm_epochs + 1) // 2, cfg.lm_epochs})
    _check_earlier_run(store, [*map(WIKI.format, epochs), ZERO_SHOT,
                               *map(SUPERVISED.format, cfg.seeds)])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seeds[0])
    log(f"[data] Wikipedia and reviews ({cfg.name} configuration)")
    data: DemoData = load_data(cfg, reviews_dir, out / "cache", seed=cfg.seeds[0])
    pad, eos = data.vocab.id("<pad>"), data.vocab.id("<eos>")
    tok = Stream("token", data.vocab, "input")
    pos = Stream("pos", POS_VOCAB, "feature")
    label = Stream("label", data.labels, "label")
    ident = {"demo": cfg.name}
    results: dict = {"config": cfg.to_dict(), "data": data.stats, "device": device}

    # RQ1: self-supervised pretraining, stages at the first, a middle and the last epoch
    log("[RQ1] training the LSTM language model on Wikipedia")
    lm, history = train_lm(cfg, len(data.vocab), data.wiki_train, data.wiki_valid, eos,
                           out / "checkpoints", device, log, quiet)
    heldout = windows(data.wiki_heldout, 128)
    # with this file the checkpoints are ready for `txray collect --vocab ... --lower`
    (out / "checkpoints" / "vocab.txt").write_text("".join(w + "\n" for w in data.vocab))
    def half(model, docs):  # one half of a text, in memory
        return collect_stage(model, docs, [tok, pos], None, None, cfg, pad, device).layers[LAYER]

    split_seed = cfg.seeds[0]  # the same two halves of a text for every model
    half_states = {}  # checkpoint -> its two halves of the held-out text
    for e in epochs:
        probe = torch.load(out / "checkpoints" / f"lm-epoch{e}.pt", map_location=device,
                           weights_only=False)
        collect_stage(probe.eval(), heldout, [tok, pos], store, WIKI.format(e), cfg, pad,
                      device, {**ident, "model": f"lm-epoch{e}", "corpus": "wikipedia-heldout"})
        half_states[e] = halves(half, probe.eval(), heldout, split_seed)
    ppl = {h["epoch"]: h["valid_ppl"] for h in history}
    steps = []
    for a, b in zip(epochs, epochs[1:]):
        row = {"from_epoch": a, "to_epoch": b, "ppl_from": ppl[a], "ppl_to": ppl[b],
               "ppl_change": ppl[b] - ppl[a]}
        for stream in ("token", "pos"):
            row[stream] = _summary(_compare(store, WIKI.format(a), WIKI.format(b), stream))
        steps.append(row)
    floors = {e: floor(h, [tok, pos]) for e, h in half_states.items()}
    results["rq1"] = {"perplexity": history, "epochs_collected": epochs, "steps": steps,
                      "half_budget": {
                          "floors": floors,
                          "across": [across(half_states[a], half_states[b], [tok, pos])
                                     for a, b in zip(epochs, epochs[1:])]},
                      "pos_first": _pos_mass(store, WIKI.format(epochs[0])),
                      "pos_last": _pos_mass(store, WIKI.format(epochs[-1]))}

    # RQ2: zero-shot transfer of the final language model to the reviews
    log("[RQ2] zero-shot: the final language model on the reviews")
    collect_stage(lm.eval(), data.reviews_train, [tok, pos, label], store, ZERO_SHOT,
                  cfg, pad, device, {**ident, "model": "lm-final", "corpus": "reviews-train"})
    last = WIKI.format(epochs[-1])
    results["rq2"] = {s: _summary(_compare(store, last, ZERO_SHOT, s))
                      for s in ("token", "pos")}
    results["rq2"]["tokens"] = [open_store(store).stage(s).tokens
                                for s in (last, ZERO_SHOT)]
    lm_reviews = halves(half, lm.eval(), data.reviews_train, split_seed)
    lm_reviews_floor = floor(lm_reviews, [tok, pos])
    results["rq2"]["half_budget"] = {
        "across": across(half_states[epochs[-1]], lm_reviews, [tok, pos]),
        "floor_a": floors[epochs[-1]], "floor_b": lm_reviews_floor}

    # RQ3: supervised fine-tuning, one classifier per seed; pruning without retraining
    log(f"[RQ3] fine-tuning classifiers on review polarity (seeds {list(cfg.seeds)})")
    runs, prune_rows = [], []
    for seed in cfg.seeds:
        clf, info = finetune(cfg, lm, len(data.labels), data.reviews_train, data.reviews_valid,
                             pad, seed, device)
        info["test_accuracy"] = accuracy(clf, data.reviews_test, 64, pad, device)
        torch.save(clf, out / "checkpoints" / f"classifier-s{seed}.pt")  # whole module
        stage = SUPERVISED.format(seed)
        collect_stage(clf, data.reviews_train, [tok, pos, label], store, stage, cfg, pad,
                      device, {**ident, "model": f"classifier-s{seed}", "corpus": "reviews-train"})
        cmp = _compare(store, ZERO_SHOT, stage, "token")
        if seed == cfg.seeds[0]:
            clf_reviews = halves(half, clf.eval(), data.reviews_train, split_seed)
            rq3_half = {"across": across(lm_reviews, clf_reviews, [tok, pos]),
                        "floor_a": lm_reviews_floor,
                        "floor_b": floor(clf_reviews, [tok, pos])}
        info["vs_zero_shot"] = _summary(cmp)
        runs.append(info)
        metric = lambda m: accuracy(m, data.reviews_test, 64, pad, device)  # noqa: E731
        for r in evaluate_pruning(clf, {LAYER: cmp.table()}, metric, cfg.selectors,
                                  cfg.prune_fractions, seeds=[seed], side="b"):
            prune_rows.append({**r, "finetune_seed": seed})
        log(f"  seed {seed}: test accuracy {info['test_accuracy']:.3f}")
    s0 = SUPERVISED.format(cfg.seeds[0])
    results["rq3"] = {"runs": runs, **{s: _summary(_compare(store, ZERO_SHOT, s0, s))
                                       for s in ("token", "pos", "label")},
                      "half_budget": rq3_half}
    table = stage_table(open_store(store).stage(s0).layer(LAYER).stream("token").stats)
    results["rq3"]["dead_in_supervised"] = int((~table["alive"]).sum())
    results["pruning"] = {"rows": prune_rows, "summary": summarize(
        [{**r, "seed": r["finetune_seed"]} for r in prune_rows])}
    log("[report] writing report.html")
    from ..report import build_report
    stages = [WIKI.format(e) for e in epochs] + [ZERO_SHOT, s0]
    build_report(store, stages=stages, layers=[LAYER], out=out / "report.html",
                 title=f"TX-Ray pipeline ({cfg.name})")
    results["seconds"] = round(time.monotonic() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json))
    return results


def _json(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x).__name__)
