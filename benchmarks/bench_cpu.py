"""CPU throughput of the engine's select + accumulate path, in one run with its baselines.

For each shape: the engine (``Accumulator.observe``: validation, non-finite check, top-k, scatter
into the exact state the engine picks), its selection step alone (``txray_kernels.select``), a
torch-native baseline written the way a user would (``topk`` + ``index_put_(accumulate=True)`` /
``scatter_reduce_`` into dense int64/float64/float32 tensors), and ``torch.sum`` over the same
activations (the read-bandwidth ceiling); bf16/fp16 inputs against ``.float()`` first. GB/s
counts the activation bytes read once. Run:
``.venv/bin/python -m pytest benchmarks/bench_cpu.py --benchmark-enable -s``
"""

import gc
import time

import pytest
import torch

import txray_kernels as kernels
from txray_engine import Accumulator

P = 8192  # tokens per call
SHAPES = [(n, v, k) for n in (1024, 4096) for v in (17, 50_000) for k in (1, 8)]


def best_times(fns, repeat=9):
    """Best time of each function, calling them in turn (round-robin) so every one sees the same
    machine conditions; these machines are shared and their speed drifts between seconds."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def baseline_state(n, v):
    return (torch.zeros(n * v, dtype=torch.int64), torch.zeros(n * v, dtype=torch.float64),
            torch.full((n * v,), -torch.inf))


def baseline_step(acts, feats, k, v, state):
    count, mass, peak = state
    vals, idx = acts.topk(k, dim=1)
    flat = (idx * v + feats[:, None]).reshape(-1)
    vals = vals.reshape(-1)
    count.index_put_((flat,), torch.ones_like(flat), accumulate=True)
    mass.index_put_((flat,), vals.clamp(min=0).double(), accumulate=True)
    peak.scatter_reduce_(0, flat, vals, "amax")


ROWS = []


@pytest.mark.parametrize("n,v,k", SHAPES)
def test_cpu_path(n, v, k):
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(P, n, generator=g)
    feats = torch.randint(0, v, (P,), generator=g)
    acc = Accumulator({"f": [str(i) for i in range(v)]}, k=k)
    state = baseline_state(n, v)
    t_engine, t_select, t_base, t_sum = best_times(
        [lambda: acc.observe("l", acts, {"f": feats}), lambda: kernels.select(acts, k),
         lambda: baseline_step(acts, feats, k, v, state), lambda: acts.sum()])
    gb = acts.numel() * 4 / 1e9
    kind = acc.layers["l"].streams["f"].kind
    ROWS.append((n, v, k, kind, P / t_engine, gb / t_engine, gb / t_sum, t_base / t_engine,
                 t_sum / t_engine, t_sum / t_select))
    del state
    gc.collect()


def test_zz_print_table():
    print("\n| N | V | k | state | engine tokens/s | engine GB/s | sum GB/s | vs baseline "
          "| % of sum bandwidth | select alone, % of sum |\n|---|---|---|---|---|---|---|---|---|---|")
    for n, v, k, kind, tps, gbs, sgbs, speedup, frac, sel in ROWS:
        print(f"| {n} | {v} | {k} | {kind} | {tps:,.0f} | {gbs:.2f} | {sgbs:.2f} | "
              f"{speedup:.2f}x | {frac:.0%} | {sel:.0%} |")


HALF_ROWS = []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [1, 8])
def test_cpu_path_16bit(dtype, k):
    """bf16/fp16 activations (a model run at 16 bits on the CPU): the engine reads them as they
    are; the baseline is the selection after ``tensor.float()``, the way the engine did before
    (and the way a user with a float32 tool would); ``sum`` reads the 16-bit tensor."""
    n = 1024
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(P, n, generator=g).to(dtype)
    feats = torch.randint(0, 17, (P,), generator=g)
    acc = Accumulator({"f": [str(i) for i in range(17)]}, k=k)
    t_engine, t_select, t_widened, t_sum = best_times(
        [lambda: acc.observe("l", acts, {"f": feats}), lambda: kernels.select(acts, k),
         lambda: kernels.select(acts.float(), k), lambda: acts.sum()])
    HALF_ROWS.append((str(dtype).split(".")[1], n, k, P / t_engine, t_select * 1e3,
                      t_widened * 1e3, t_widened / t_select, t_sum / t_engine))


def test_zz_print_16bit_table():
    print("\n| dtype | N | k | engine tokens/s | select ms | .float() + select ms | speed-up "
          "| engine, % of 16-bit sum |\n|---|---|---|---|---|---|---|---|")
    for dt, n, k, tps, sel, wid, speedup, frac in HALF_ROWS:
        print(f"| {dt} | {n} | {k} | {tps:,.0f} | {sel:.2f} | {wid:.2f} | {speedup:.1f}x | "
              f"{frac:.0%} |")


BATCH_ROWS = []


@pytest.mark.parametrize("n,b,t", [(576, 8, 256), (1536, 8, 256), (576, 1, 4)])
def test_layers_of_one_batch(n, b, t):
    """What the collector does per batch: the 30 layers of one forward pass (8 sequences of 256
    positions, ~40% of them padding in the last sequences: 1,208 kept; or one sequence of 4
    positions, where the fixed cost per layer is all there is), 4 streams (POS, token and
    predicted token over a 49,152 vocabulary, label; the token streams are sparse at these
    widths), k = 1. ``prepare_batch`` keeps and checks the shared positions once and reads the
    kept rows in place, against one ``observe`` per layer, which did both per layer."""
    layers = 30
    g = torch.Generator().manual_seed(2)
    vocab = [str(i) for i in range(49_152)]
    streams = {"pos": [str(i) for i in range(17)], "token": vocab, "pred": vocab,
               "label": ["neg", "pos"]}
    mask = torch.ones(b, t, dtype=torch.bool)
    for i in range(b):
        mask[i, t - 30 * i:] = False
    feats = {name: torch.randint(0, len(v), (b, t), generator=g) for name, v in streams.items()}
    acts = {f"layers.{i}": torch.randn(b, t, n, generator=g) for i in range(layers)}
    one, many = Accumulator(streams, k=1), Accumulator(streams, k=1)

    def per_layer():
        for name, a in acts.items():
            one.observe(name, a, feats, mask)

    def together():
        for prepared in many.prepare_batch(acts, feats, mask):
            many.commit(prepared)

    t_one, t_many = best_times([per_layer, together], repeat=7)
    kept = int(mask.sum())
    BATCH_ROWS.append((n, layers, kept, t_one * 1e3, t_many * 1e3, t_one / t_many,
                       kept * layers / t_many))


def test_zz_print_batch_table():
    print("\n| N | layers | kept positions | observe per layer, ms | prepare_batch + commit, ms "
          "| speed-up | layer-positions/s | µs per layer |\n|---|---|---|---|---|---|---|---|")
    for n, layers, kept, one, many, speedup, rate in BATCH_ROWS:
        print(f"| {n} | {layers} | {kept} | {one:.2f} | {many:.2f} | {speedup:.2f}x | "
              f"{rate:,.0f} | {many * 1e3 / layers:.0f} |")


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.parametrize("v", [17, 50_000])
def test_memory_does_not_grow_with_tokens(v):
    """Accumulate 10x more (fresh) tokens into the same state: resident memory must not grow
    beyond what the state itself holds (fixed for a dense state; the distinct cells for a sparse
    one)."""
    n, k = 1024, 8
    g = torch.Generator().manual_seed(1)
    acc = Accumulator({"f": [str(i) for i in range(v)]}, k=k)

    def run(batches):
        peak = 0.0
        for _ in range(batches):
            acts = torch.randn(P, n, generator=g)
            feats = torch.randint(0, v, (P,), generator=g)
            acc.observe("l", acts, {"f": feats})
            peak = max(peak, _rss_mib())
        return peak, acc.layers["l"].streams["f"].nbytes / 2**20

    first, state_first = run(3)
    second, state_second = run(30)
    kind = acc.layers["l"].streams["f"].kind
    print(f"\n{kind} state, V={v}: highest resident memory {first:.0f} MiB over the first "
          f"{3 * P:,} tokens, {second:.0f} MiB over the next {30 * P:,}; state "
          f"{state_first:.1f} → {state_second:.1f} MiB")
    assert second <= first + (state_second - state_first) + 64
