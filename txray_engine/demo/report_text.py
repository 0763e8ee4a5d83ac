"""The printed summary of a pipeline run: one short block per research question."""

from __future__ import annotations


def _f(x, fmt=".3f"):
    return "-" if x is None else format(x, fmt)


def format_summary(r: dict) -> str:
    d = r["data"]
    lines = [f"TX-Ray pipeline ({r['config']['name']} configuration) in {r['seconds']:.0f} s on "
             f"{r['device']}",
             f"data: {d['wiki_train_tokens']:,} Wikipedia training tokens, vocabulary "
             f"{d['vocab_size']:,}, {d['reviews']:,} reviews ({d['review_unk_rate']:.1%} unknown "
             f"words)", "",
             "RQ1 pretraining: how neurons change between epochs (held-out Wikipedia)"]
    for s in r["rq1"]["steps"]:
        t, p = s["token"], s["pos"]
        lines.append(f"  epoch {s['from_epoch']} → {s['to_epoch']}: perplexity "
                     f"{s['ppl_from']:.1f} → {s['ppl_to']:.1f}; Hellinger token "
                     f"{_f(t['hellinger_mean'])}, POS {_f(p['hellinger_mean'])} over "
                     f"{t['shared']} shared neurons")
    hb = r["rq1"].get("half_budget")
    if hb:
        lines.append("  at half budget (two random halves of the text; a change stands out where "
                     "the first figure is above both floors):")
        floors = {int(e): v for e, v in hb["floors"].items()}
        for s, x in zip(r["rq1"]["steps"], hb["across"]):
            a, b = s["from_epoch"], s["to_epoch"]
            lines.append(f"    epoch {a} → {b} " + _half(x, floors[a], floors[b],
                                                          f"epoch {a}", f"epoch {b}"))
    first, last = r["rq1"]["pos_first"], r["rq1"]["pos_last"]
    top = sorted(first, key=lambda k: -first[k]["frequency_share"])[:6]
    lines.append("  POS tag: corpus share | mass share first → last epoch")
    for tag in top:
        lines.append(f"    {tag:>5}: {first[tag]['frequency_share']:.1%} | "
                     f"{first[tag]['mass_share']:.1%} → {last[tag]['mass_share']:.1%}")
    z = r["rq2"]["token"]
    lines += ["", "RQ2 zero-shot transfer (last epoch on Wikipedia → reviews)",
              f"  {z['shared']} shared, {z['only_a']} dead on reviews, {z['only_b']} new; "
              f"Hellinger token {_f(z['hellinger_mean'])}, POS "
              f"{_f(r['rq2']['pos']['hellinger_mean'])}; mean length shift "
              f"{_f(z['length_shift_mean'], '+.1f')}"]
    a, b = r["rq2"].get("tokens", (0, 0))
    if max(a, b) > 1.2 * max(1, min(a, b)):  # rather different budgets
        lines.append(f"  over {a:,} Wikipedia and {b:,} review tokens: lengths grow with the "
                     f"tokens counted, so the shift is not only the domain's")
    if "half_budget" in r["rq2"]:
        h = r["rq2"]["half_budget"]
        lines.append("  at half budget: " + _half(h["across"], h["floor_a"], h["floor_b"],
                                                  "Wikipedia", "reviews"))
    q = r["rq3"]
    accs = [run["test_accuracy"] for run in q["runs"]]
    lines += ["", "RQ3 supervised fine-tuning (zero-shot → supervised, first seed)",
              f"  test accuracy {', '.join(f'{a:.3f}' for a in accs)} (seeds "
              f"{', '.join(str(run['seed']) for run in q['runs'])})",
              f"  {q['token']['shared']} shared, {q['token']['only_a']} lost, "
              f"{q['token']['only_b']} new, {q['token']['dead_both']} dead in both; Hellinger token "
              f"{_f(q['token']['hellinger_mean'])}, POS {_f(q['pos']['hellinger_mean'])}, "
              f"label {_f(q['label']['hellinger_mean'])}",
              *(["  at half budget: " + _half(q["half_budget"]["across"],
                                              q["half_budget"]["floor_a"],
                                              q["half_budget"]["floor_b"], "zero-shot",
                                              "supervised")] if "half_budget" in q else []),
              "", "Pruning the fine-tuned LSTM without retraining: test accuracy, mean ± std "
              "over fine-tuning seeds (units pruned)"]
    summ = r["pruning"]["summary"]
    fractions = sorted({s["fraction"] for s in summ})
    lines.append("  " + "selector".ljust(14) + "".join(f"{f:>22.0%}" for f in fractions))
    for sel in dict.fromkeys(s["selector"] for s in summ):
        cells = {s["fraction"]: s for s in summ if s["selector"] == sel}
        lines.append("  " + sel.ljust(14) + "".join(
            f"{_cell(cells[f]):>22}" if f in cells else f"{'-':>22}" for f in fractions))
    lines.append("  most/least_changed choose among shared neurons and dead among dead ones: "
                 "fewer units than the fraction when those are fewer")
    return "\n".join(lines)


def _half(x: dict, fa: dict, fb: dict, a: str, b: str) -> str:
    """``across halves token 0.69 (floors 0.54 epoch 2, 0.51 epoch 3), POS …``."""
    return "; ".join(f"{'POS' if s == 'pos' else s} across halves {_f(x[s]['hellinger_mean'])} (floors "
                     f"{_f(fa[s]['hellinger_mean'])} {a}, {_f(fb[s]['hellinger_mean'])} {b})"
                     for s in ("token", "pos") if s in x)


def _cell(s: dict) -> str:
    """``0.613±0.016 (50)``; the units pruned as ``lo-hi`` when seeds differ."""
    lo, hi = s.get("pruned_min"), s.get("pruned_max")
    units = "" if lo is None else f" ({lo})" if lo == hi else f" ({lo}-{hi})"
    return f"{s['mean']:.3f}±{s['std']:.3f}{units}"
