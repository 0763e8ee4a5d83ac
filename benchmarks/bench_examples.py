"""CPU time of the running top examples (``TopExamples.update``) over a stream of batches, in one
run with a torch-native baseline written the way a user would: each batch's ``topk`` down the
columns, concatenated with the kept lists and sorted again.

The two see the same batches, in turn per batch (these machines are shared; their speed drifts),
and must keep the same values. Early batches are the expensive ones for the engine (every neuron
has candidates); the table shows the first batch, batches 2-5, the last 10 (a longer stream
stays there or below) and the stream's mean. Then the engine's cost of them:
``Accumulator.observe`` of masked batches with ``examples=8`` against the same without examples. The engine's numba kernel is loaded (from numba's
cache, once per process) before the timing. Run:
``.venv/bin/python -m pytest benchmarks/bench_examples.py --benchmark-enable -s``
"""

import time

import pytest
import torch

from txray_engine import Accumulator
from txray_engine.accumulate.examples import TopExamples

P, BATCHES, M, WIDTH = 2048, 40, 8, 11
ROWS = []


class BaselineTop:
    """Per batch: ``topk`` of each column, then cat + sort with the kept ``m``."""

    def __init__(self, n, m, width):
        self.value = torch.full((n, m), -torch.inf)
        self.at = torch.full((n, m), -1, dtype=torch.long)
        self.context = torch.full((n, m, width), -1, dtype=torch.long)
        self.m, self.width = m, width

    def update(self, acts, doc, pos, context):
        v, i = torch.topk(acts.float(), min(self.m, acts.shape[0]), dim=0)
        value = torch.cat([self.value, v.t()], 1)
        at = torch.cat([self.at, (doc[i] * 1_000_000 + pos[i]).t()], 1)
        ctx = torch.cat([self.context, context[i].transpose(0, 1)], 1)
        order = torch.sort(value, dim=1, descending=True, stable=True).indices[:, : self.m]
        self.value = torch.gather(value, 1, order)
        self.at = torch.gather(at, 1, order)
        self.context = torch.gather(ctx, 1, order.unsqueeze(-1).expand(-1, -1, self.width))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1024, 4096])
def test_top_examples_stream(n, dtype):
    g = torch.Generator().manual_seed(0)
    engine, base = TopExamples(n, M, WIDTH), BaselineTop(n, M, WIDTH)
    scratch = TopExamples(3, M, WIDTH)  # load the numba kernel before timing
    scratch.update(torch.zeros(1, 3, dtype=dtype), torch.zeros(1, dtype=torch.long),
                   torch.zeros(1, dtype=torch.long), torch.zeros(1, WIDTH, dtype=torch.long))
    times = {"engine": [], "baseline": [], "sum": []}
    for b in range(BATCHES):
        acts = torch.randn(P, n, generator=g).to(dtype)
        where = (torch.full((P,), b), torch.arange(P), torch.randint(0, 50_000, (P, WIDTH)))
        for name, fn in (("engine", lambda: engine.update(acts, *where)),
                         ("baseline", lambda: base.update(acts, *where)),
                         ("sum", lambda: acts.sum())):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    assert torch.equal(engine.value, base.value)  # randn: no ties, so the same lists
    ROWS.append((n, str(dtype).removeprefix("torch."), times))


def test_zz_print_examples_table():
    print(f"\nTop examples: m = {M}, context {WIDTH}, {BATCHES} batches of {P} positions; "
          "milliseconds per batch, engine / baseline\n\n| N | dtype | first | batches 2-5 "
          "| last 10 | mean | speed-up: mean, last 10 | sum, mean |\n|---|---|---|---|---|---|---|---|")
    for n, dtype, t in ROWS:
        ms = {k: [x * 1e3 for x in v] for k, v in t.items()}
        mean = {k: sum(v) / len(v) for k, v in ms.items()}
        early = {k: sum(v[1:5]) / 4 for k, v in ms.items()}
        late = {k: sum(v[-10:]) / 10 for k, v in ms.items()}
        print(f"| {n} | {dtype} | {ms['engine'][0]:.1f} / {ms['baseline'][0]:.1f} | "
              f"{early['engine']:.1f} / {early['baseline']:.1f} | "
              f"{late['engine']:.2f} / {late['baseline']:.2f} | "
              f"{mean['engine']:.2f} / {mean['baseline']:.2f} | "
              f"{mean['baseline'] / mean['engine']:.2f}x, {late['baseline'] / late['engine']:.2f}x "
              f"| {mean['sum']:.2f} |")


ENGINE_ROWS = []


@pytest.mark.parametrize("n", [1024, 4096])
def test_engine_with_and_without_examples(n):
    """``observe`` (k = 1, one stream) of 40 batches of 8 x 256 positions, 20% padding, with top
    examples (m = 8, context 11) and without, batch by batch in turn."""
    g = torch.Generator().manual_seed(1)
    streams = {"t": [str(i) for i in range(50)]}
    accs = {"with": Accumulator(streams, examples=M, context_radius=WIDTH // 2),
            "without": Accumulator(streams)}
    times = {name: [] for name in accs}
    for b in range(BATCHES):
        acts = torch.randn(8, 256, n, generator=g)
        ids = torch.randint(0, 50, (8, 256), generator=g)
        mask = torch.rand(8, 256, generator=g) > 0.2
        where = {"doc": torch.arange(8).unsqueeze(1).expand(8, 256) + 8 * b,
                 "pos": torch.arange(256).expand(8, 256),
                 "context": torch.randint(0, 50, (8, 256, WIDTH), generator=g)}
        for name, acc in accs.items():
            t = time.perf_counter()
            acc.observe("l", acts, {"t": ids}, mask, where if name == "with" else None)
            times[name].append(time.perf_counter() - t)
    ENGINE_ROWS.append((n, {k: sum(v[1:]) / (len(v) - 1) * 1e3 for k, v in times.items()}))


def test_zz_print_engine_table():
    print(f"\nobserve, ms per batch of 8 x 256 positions (20% padding), batches 2-{BATCHES}\n\n"
          "| N | with examples | without | examples add |\n|---|---|---|---|")
    for n, ms in ENGINE_ROWS:
        print(f"| {n} | {ms['with']:.2f} | {ms['without']:.2f} | "
              f"{ms['with'] / ms['without'] - 1:.0%} |")
