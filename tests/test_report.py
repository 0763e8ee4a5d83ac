"""txray report: structure of the HTML file, caps, CLI errors, and a render in headless Chromium."""

import html
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("plotly")

import plotly.offline  # noqa: E402

import txray_engine.cli.report  # noqa: E402,F401  (registers `txray report`)
from txray_engine import Accumulator, StageWriter  # noqa: E402
from txray_engine.errors import InputError, StoreError  # noqa: E402
from txray_engine.features.pos import POS_VOCAB  # noqa: E402
from txray_engine.report import build_report  # noqa: E402
from txray_engine.report.data import even_ranks, sample  # noqa: E402
from naive import run_cli  # noqa: E402

SECTIONS = ["overview", "mass", "hellinger", "length", "pos", "changed", "explorer"]
#: A feature string that breaks pages that do not escape (HTML, JSON inside <script>, hover text).
NASTY = "</script><b>&'\""
CHROMIUM = "/usr/bin/chromium"


def make_pos_store(path, stages=("pretrained", "finetuned"), layers=("enc.0", "enc.1"), n=16,
                   vocab_size=40, tokens=1500, pos_vocab=tuple(POS_VOCAB)):
    """Two stages with token, predicted and pos streams, built directly (no tagger needed)."""
    words = [f"w{i}" for i in range(vocab_size - 1)] + [NASTY]
    vocab = {"token": words, "predicted": words, "pos": list(pos_vocab)}
    for si, stage in enumerate(stages):
        g = torch.Generator().manual_seed(si)
        acc = Accumulator(vocab, k=2)
        for layer in layers:
            tok = torch.randint(0, vocab_size, (tokens,), generator=g)
            acts = torch.randn(tokens, n, generator=g)
            # neurons 0..n/2 prefer tokens ≡ neuron (mod n/2), more sharply in later stages
            acts[:, : n // 2] += (tok[:, None] % (n // 2) == torch.arange(n // 2)) * (1.5 + si)
            acts[:, -1] = -5.0  # one dead neuron
            pred = torch.randint(0, vocab_size, (tokens,), generator=g)
            acc.observe(layer, acts, {"token": tok, "predicted": pred, "pos": (tok * 7) % 12})
        with StageWriter(path, stage, "new", {"model": "m"}) as w:
            w.commit(acc, {"units": 1}, "complete")
    return path


@pytest.fixture(scope="module")
def pos_store(tmp_path_factory):
    return make_pos_store(tmp_path_factory.mktemp("report") / "s.zarr")


def _without_plotlyjs(page: str) -> str:
    js = plotly.offline.get_plotlyjs()
    assert page.count(js) == 1, "plotly.js must be embedded exactly once"
    return page.replace(js, "")


def _explorer(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="txray-explorer-data">(.*?)</script>', page,
                  re.S)
    return json.loads(m.group(1))


def check_offline(page: str) -> str:
    """No external resource: no http(s) URL outside plotly.js, no src/href but in-page anchors."""
    rest = _without_plotlyjs(page)
    assert "http://" not in rest and "https://" not in rest
    assert not re.search(r"<(link|iframe|img|object|embed)\b", rest)
    for attr in re.findall(r'\b(?:src|href)\s*=\s*["\']([^"\']*)', rest):
        assert attr.startswith("#"), attr
    assert "Content-Security-Policy" in rest and "default-src 'none'" in rest
    return rest


def test_report_structure(pos_store, tmp_path):
    out = tmp_path / "sub" / "r.html"
    rep = build_report(pos_store, out=out)
    assert rep.path == out and out.stat().st_size == rep.size
    assert rep.stages == ["pretrained", "finetuned"]  # the order they were collected in
    assert rep.pairs == [("pretrained", "finetuned")] and rep.stream == "token"
    # per layer: mass, Hellinger, length shift, POS
    assert rep.figures == 2 * 4 and rep.notes == []
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    rest = check_offline(page)
    assert len(rest) < 400_000 and rep.size < 8_000_000  # plotly.js: ~4.8 MB (plotly 7)
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in rest
    assert rest.count("Plotly.newPlot(") == rep.figures
    assert rest.count('class="plotly-graph-div"') == rep.figures
    assert "no top activating contexts" in rest and '"examples":null' in rest
    # most/least changed tables: 15 neurons with a distance, split 8 + 7 (never the same neuron
    # in both), with clickable neuron ids
    assert rest.count("<h4>8 most changed</h4>") == 2
    assert rest.count("<h4>7 least changed</h4>") == 2
    assert rest.count('class="nlink"') == 2 * 15
    # the nasty feature string is escaped everywhere (tables, hover text, JSON)
    assert NASTY not in rest and "&lt;/script&gt;&lt;b&gt;&amp;" in rest
    data = _explorer(page)
    assert data["stages"] == rep.stages
    assert [lay["name"] for lay in data["layers"]] == ["enc.0", "enc.1"]
    lay = data["layers"][0]
    assert lay["n"] == 16 and lay["neurons"] is None
    assert {s["name"] for s in lay["streams"]} == {"token", "predicted", "pos"}
    tok = next(s for s in lay["streams"] if s["name"] == "token")
    assert NASTY in tok["strings"]  # round-trips through JSON unharmed
    assert all(len(rows) == 16 for rows in tok["top"].values())
    assert tok["top"]["finetuned"][15] == []  # the dead neuron
    assert len(tok["top"]["finetuned"][0]) == 2 * 6
    assert lay["hellinger"][0]["values"][15] is None


def test_the_report_reads_again_a_stage_a_collection_replaced(pos_store, tmp_path,
                                                              monkeypatch):
    """`txray report` failed with StageChangedError where `neurons` and `compare` read again."""
    from click.testing import CliRunner

    import txray_engine.report as report_module
    from txray_engine.cli import main
    from txray_engine.errors import StageChangedError
    calls = []

    def changed_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise StageChangedError("stage 'pretrained' was updated by a writer")
        return build_report(*args, **kwargs)
    monkeypatch.setattr(report_module, "build_report", changed_once)
    res = CliRunner().invoke(main, ["report", str(pos_store), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0 and len(calls) == 2 and (tmp_path / "r.html").is_file(), res.output


def test_a_tag_written_as_markup_stays_text(tmp_path):
    """A POS vocabulary entry '<a href=...>' became a live link in the figure's tick labels."""
    link = '<a href="https://evil.example/">click</a>'
    store = make_pos_store(tmp_path / "s.zarr", pos_vocab=[link, *list(POS_VOCAB)[1:]])
    page = (build_report(store, out=tmp_path / "r.html").path).read_text()
    # (the explorer's data keeps the string: it is shown as text, never parsed as markup)
    assert '"x":["&lt;a href=' in page and '"x":["\\u003ca href' not in page


def test_a_stage_name_with_a_template_stays_text(tmp_path):
    """plotly expanded '%{y}' in a stage name written into a hover template (it showed a value)."""
    stages = ("a%{y}", "b%{customdata[0]}")
    store = make_pos_store(tmp_path / "s.zarr", stages=stages, layers=("enc.0",))
    page = build_report(store, out=tmp_path / "r.html").path.read_text()
    templates = re.findall(r'"hovertemplate":("(?:[^"\\]|\\.)*")', page)
    assert templates and not any(s in json.loads(t) for t in templates for s in stages)
    dec = json.JSONDecoder()
    metas = {tuple(dec.raw_decode(page, m.end())[0]) for m in re.finditer('"meta":', page)}
    assert metas >= {stages[:1], stages[1:], stages}


def test_caps_and_choices(pos_store, tmp_path):
    out = tmp_path / "r.html"
    rep = build_report(pos_store, stages=["pretrained", "finetuned"], layers=["enc.1"], out=out,
                       max_points=5, max_neurons=4, top_features=2, changed=3, stream="predicted")
    assert rep.pairs == [("pretrained", "finetuned")] and rep.layers == ["enc.1"]
    assert rep.stream == "predicted" and rep.figures == 4
    assert any("4 of 16 neurons embedded" in n for n in rep.notes)
    page = out.read_text()
    assert "Showing 5 of 15 shared neurons" in page  # the dead neuron is not shared
    assert "<h4>3 most changed</h4>" in page
    lay = _explorer(page)["layers"][0]
    assert len(lay["neurons"]) == 4 and lay["neurons"] == sorted(lay["neurons"])
    assert all(len(r) <= 4 for s in lay["streams"] for rows in s["top"].values() for r in rows)
    assert "4 of 16 neurons embedded" in page


def test_rarely_selected_neurons_can_count_as_dead(pos_store, tmp_path):
    """The changed tables show how often each neuron was selected; min_neuron_count leaves the
    rarely selected out of every comparison of the report."""
    from txray_engine import open_store
    st = open_store(pos_store)
    counts = [st.stage(s).layer("enc.0").neuron_count for s in ("pretrained", "finetuned")]
    cut = int(np.median(np.minimum(*counts))) + 1
    pages = {}
    for n in (1, cut):
        build_report(pos_store, layers=["enc.0"], out=tmp_path / f"{n}.html", min_neuron_count=n)
        pages[n] = (tmp_path / f"{n}.html").read_text()
    assert "<th>selected</th>" in pages[1]
    shared = int((np.minimum(*counts) >= cut).sum())
    assert shared < 16 and f"{shared} shared" in pages[cut]
    assert f"selected at least {cut} times" in pages[cut] and "selected at least" not in pages[1]
    with pytest.raises(InputError, match="min_neuron_count must be a whole number ≥ 1"):
        build_report(pos_store, out=tmp_path / "x.html", min_neuron_count=0)
    assert "neurons whose POS distribution puts most weight on the tag" in pages[1]


def test_sampling_helpers():
    assert even_ranks(5, 10).tolist() == [0, 1, 2, 3, 4]
    r = even_ranks(1000, 7)
    assert r[0] == 0 and r[-1] == 999 and len(r) == 7
    ids = np.arange(100, 200)
    s = sample(ids, 10, keep=[150, 199, 5])
    assert len(s) == 10 and {150, 199} <= set(s.tolist()) and set(s) <= set(ids)
    assert sample(ids, 500).tolist() == ids.tolist()


def test_single_stage_and_errors(pos_store, tmp_path):
    rep = build_report(pos_store, stages=["finetuned"], out=tmp_path / "one.html")
    assert rep.pairs == [] and rep.figures == 2 * 2  # mass + POS per layer
    assert any("Only one stage" in n for n in rep.notes)
    assert "Needs two stages" in rep.path.read_text()
    with pytest.raises(StoreError, match="unknown stage 'nope'"):
        build_report(pos_store, stages=["finetuned", "nope"], out=tmp_path / "x.html")
    with pytest.raises(InputError, match="layer 'x' is not in stage"):
        build_report(pos_store, layers=["x"], out=tmp_path / "x.html")
    with pytest.raises(InputError, match="stream 'label' is not in stage"):
        build_report(pos_store, stream="label", out=tmp_path / "x.html")
    with pytest.raises(InputError, match="given twice"):
        build_report(pos_store, stages=["finetuned", "finetuned"], out=tmp_path / "x.html")
    with pytest.raises(StoreError, match="no store"):
        build_report(tmp_path / "missing.zarr", out=tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def test_cli_report(two_stages, tmp_path):
    out = tmp_path / "r.html"
    text = run_cli("report", two_stages, "--stages", "text,reviews", "--out", out)
    assert f"wrote {out}" in text and "pairs text → reviews" in text
    assert "note: No pos stream" in text
    page = out.read_text()
    check_offline(page)
    assert "None of the stages has a pos stream" in page
    assert page.count('class="plotly-graph-div"') == 3  # mass, Hellinger, length shift (token)
    assert "No pos stream in both stages: not shown." in page
    quiet = run_cli("report", two_stages, "--stages", "reviews", "--stages", "text", "--out", out,
                    "--layer", "lstm", "-q")  # (the notes alone, on stderr)
    assert quiet and all(line.startswith("note: ") for line in quiet.splitlines())
    err = run_cli("report", two_stages, "--stages", "text,nope", "--out", out, code=2)
    assert err.startswith("error: unknown stage 'nope'") and len(err.strip().splitlines()) == 1
    err = run_cli("report", two_stages, "--layer", "nope", "--out", out, code=2)
    assert "layer 'nope' is not in stage" in err
    text = run_cli("report", two_stages, "--stages", "text", "--out", out)
    assert "pairs none" in text and "Only one stage" in text


# -- the page in a real browser --------------------------------------------------------------------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                  "--window-size=1400,2400"]

#: Put first into <head> of a copy of the page: records errors, rejections, console.error/warn
#: and CSP violations in an attribute of <html>, which --dump-dom shows.
ERROR_HOOK = """<script>(function () {
  var E = [];
  function put() { document.documentElement.setAttribute("data-test-errors", JSON.stringify(E)); }
  window.addEventListener("error", function (e) { E.push("error: " + e.message); put(); });
  window.addEventListener("unhandledrejection", function (e) { E.push("rejection: " + e.reason); put(); });
  document.addEventListener("securitypolicyviolation", function (e) { E.push("CSP: " + e.blockedURI); put(); });
  ["error", "warn"].forEach(function (k) {
    var f = console[k];
    console[k] = function () { E.push(k + ": " + Array.prototype.join.call(arguments, " ")); put(); return f.apply(console, arguments); };
  });
  put();
})();</script>"""


def render_in_chromium(page: Path, tmp_path: Path, screenshot: Path | None = None,
                       script: str = ""):
    """Open ``page`` in headless Chromium (``script`` runs after the page's own scripts); return
    (DOM after scripts, console lines, JS errors)."""
    probe = tmp_path / f"probe-{page.stem}.html"
    text = page.read_text().replace("<head>", "<head>" + ERROR_HOOK, 1)
    head, _, tail = text.rpartition("</body>")
    probe.write_text(f"{head}<script>{script}</script></body>{tail}")
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}",
           "--dump-dom"]
    if screenshot is not None:
        cmd.append(f"--screenshot={screenshot}")
    res = subprocess.run(cmd + [probe.as_uri()], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-2000:]
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    m = re.search(r'data-test-errors="([^"]*)"', res.stdout)
    assert m, "the error hook did not run"
    return res.stdout, console, json.loads(html.unescape(m.group(1)))


needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")


@needs_chromium
def test_browser_harness_sees_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><head><title>t</title></head><body>"
                   "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    _, console, errors = render_in_chromium(bad, tmp_path)
    assert any("boom" in e for e in errors) and any("undefinedFunction" in e for e in errors)
    assert any("undefinedFunction" in line for line in console)


@needs_chromium
def test_report_renders_in_chromium(pos_store, tmp_path):
    out = tmp_path / "r.html"
    rep = build_report(pos_store, out=out)
    shot = Path(os.environ.get("TXRAY_REPORT_SCREENSHOT") or tmp_path / "report.png")
    dom, console, errors = render_in_chromium(out, tmp_path, screenshot=shot)
    assert errors == [] and console == []
    containers = dom.split('class="plot-container plotly"')[1:]
    assert len(containers) == rep.figures
    for c in containers:  # every plot drew its SVG with traces
        head = c[:200_000]
        assert 'class="main-svg"' in head and ("scatterlayer" in head or "barlayer" in head)
    assert dom.count('class="point"') > 50  # markers of the scatter plots
    explorer = dom[dom.index('id="ex-out"'):]
    assert re.match(r'id="ex-out"><h4>enc\.0, neuron \d+</h4>', explorer)
    assert explorer.count('class="feat"') >= 12  # top features of two stages rendered by the script
    assert shot.stat().st_size > 20_000


@needs_chromium
def test_explorer_in_chromium(pos_store, tmp_path):
    out = tmp_path / "capped.html"
    build_report(pos_store, layers=["enc.1"], out=out, max_neurons=4)
    kept = _explorer(out.read_text())["layers"][0]["neurons"]
    missing = next(n for n in range(16) if n not in kept)
    script = f"""
      var log = [];
      window.txrayShowNeuron("enc.1", {missing});
      log.push(document.getElementById("ex-out").textContent);
      window.txrayShowNeuron("enc.1", {kept[0]});
      document.getElementById("ex-next").click();
      log.push(document.getElementById("ex-out").querySelector("h4").textContent);
      document.querySelector("a.nlink").click();
      log.push(document.getElementById("ex-neuron").value);
      document.body.setAttribute("data-log", JSON.stringify(log));
    """
    dom, console, errors = render_in_chromium(out, tmp_path, script=script)
    assert errors == [] and console == []
    log = json.loads(html.unescape(re.search(r'data-log="([^"]*)"', dom).group(1)))
    assert f"Neuron {missing} is not embedded" in log[0]
    assert log[1] == f"enc.1, neuron {kept[1]}"
    first_link = re.search(r'class="nlink" data-layer="enc.1" data-neuron="(\d+)"', dom).group(1)
    assert log[2] == first_link


def test_explorer_shows_top_examples(tmp_path):
    import torch

    from txray_engine import Batch, Collector, Stream, Vocabulary
    from txray_engine.features.text import is_control, printable
    from txray_engine.models import LSTMLanguageModel

    torch.manual_seed(0)
    model = LSTMLanguageModel(12, 6, 5)
    # (a token that turns text around or writes to a terminal: shown escaped, as txray neurons
    # prints it; the explorer showed it raw)
    vocab = Vocabulary([f"w{i}" for i in range(10)] + ["\u202eevil", "bell\x07"])
    for stage in ("a", "b"):
        with Collector(model, ["lstm"], [Stream("token", vocab, "input")],
                       store=tmp_path / "s.zarr", stage=stage, examples=4,
                       context_radius=2) as col:
            for _ in range(3):
                col.step(Batch(input_ids=torch.randint(0, 12, (4, 8))))
    with Collector(model, ["lstm"], [Stream("token", vocab, "input")],
                   store=tmp_path / "s.zarr", stage="plain") as col:  # no examples
        col.step(Batch(input_ids=torch.randint(0, 12, (4, 8))))
    rep = build_report(tmp_path / "s.zarr", out=tmp_path / "r.html")
    page = rep.path.read_text()
    assert "the position itself in bold); not for plain (collected without examples" in page
    rep = build_report(tmp_path / "s.zarr", stages=["a", "b"], out=tmp_path / "r.html")
    assert any("other stages, not in this report: plain" in n for n in rep.notes)
    page = rep.path.read_text()
    assert "the position itself in bold)." in page
    payload = page.split('id="txray-explorer-data">', 1)[1].split("</script>", 1)[0]
    import json
    ex = json.loads(payload)["layers"][0]["examples"]
    assert set(ex["stages"]) == {"a", "b"} and len(ex["stages"]["a"]) == 5
    first = ex["stages"]["a"][0]
    assert 1 <= len(first) <= 3 and all(len(item) == 4 for item in first)
    value, before, word, after = first[0]  # (what they hold: test_what_users_see)
    assert word in map(printable, vocab) and len((before + after).split()) <= 4
    texts = "".join(t for rows in ex["stages"].values() for items in rows for item in items
                    for t in item[1:])
    assert "\\u202eevil" in texts and "bell\\x07" in texts
    assert not any(is_control(c) for c in texts)


def test_most_and_least_changed_never_share_a_neuron():
    """Ties (here every neuron at distance 0: a stage against itself) rank alike both ways, so
    the least changed were the most changed again."""
    from txray_engine.measures import compare
    acc = Accumulator({"token": [f"w{i}" for i in range(8)]}, k=2)
    g = torch.Generator().manual_seed(0)
    acc.observe("enc", torch.rand(300, 10, generator=g),
                {"token": torch.randint(0, 8, (300,), generator=g)})
    stats = acc.layers["enc"].stream_stats()["token"]
    cmp = compare(stats, stats)
    assert cmp["shared"].all() and np.all(cmp["hellinger"] == 0.0)
    for n in (3, 10):
        most, least = cmp.extremes(n)
        assert not set(most) & set(least) and len(most) + len(least) == min(2 * n, 10)


def test_layers_given_by_pattern(pos_store, tmp_path):
    """--layer takes patterns, as collect does (they were refused as unknown layers)."""
    rep = build_report(pos_store, layers=["enc.*"], out=tmp_path / "a.html")
    assert rep.layers == ["enc.0", "enc.1"]
    rep = build_report(pos_store, layers=["enc.1", "enc.?"], out=tmp_path / "b.html")
    assert rep.layers == ["enc.1", "enc.0"]
    with pytest.raises(InputError, match="pattern 'dec.*' matches no layer common"):
        build_report(pos_store, layers=["dec.*"], out=tmp_path / "c.html")


def test_pairs_compare_one_stage_against_several(tmp_path):
    """A zero-shot stage against each fine-tuning seed (consecutive stages would compare seed
    with seed)."""
    store = make_pos_store(tmp_path / "p.zarr", stages=("zs", "s0", "s1"), layers=("enc.0",),
                           tokens=400)
    rep = build_report(store, pairs=[("zs", "s0"), "zs:s1"], out=tmp_path / "p.html")
    assert rep.stages == ["zs", "s0", "s1"] and rep.pairs == [("zs", "s0"), ("zs", "s1")]
    page = rep.path.read_text()
    assert "zs → s1" in page and "s0 → s1" not in page
    out = tmp_path / "c.html"
    text = run_cli("report", store, "--pairs", "zs:s1", "--pairs", "zs:s0", "--out", out)
    assert "pairs zs → s1, zs → s0" in text
    for args, message in ((["--pairs", "zs:s0:s1"], "give a pair as A:B"),
                          (["--pairs", "zs:s0", "--stages", "zs,s1"], "or pairs, not both"),
                          (["--pairs", "zs:zs"], "two different stages"),
                          (["--pairs", "zs:nope"], "unknown stage 'nope'")):
        err = run_cli("report", store, *args, "--out", out, code=2)
        assert message in err and len(err.strip().splitlines()) <= 2, err


def test_neurons_without_a_distance_and_long_or_quoted_features(tmp_path):
    """A stage whose layer never activated above 0 has selected neurons but no mass, hence no
    distance: the report says so (it listed them as both most and least changed, drew an empty
    plot captioned with every neuron, and called them never selected). Features are cut at
    FEATURE_CHARS (a 3,000-character token made the page 22,000 px wide), and plotly's texts keep
    quotes as quotes (it showed &quot;)."""
    from txray_engine.report.data import FEATURE_CHARS, feature_label
    long = "x" * 3000
    words = ["a", 'say "hi"', "it's", long, NASTY]
    path = tmp_path / "s.zarr"
    for stage, shift in (("before", 0.0), ("after", -10.0)):
        g = torch.Generator().manual_seed(0)
        acc = Accumulator({"token": words}, k=2)
        for layer in ("live", "flat"):
            tok = torch.randint(0, len(words), (400,), generator=g)
            acts = torch.randn(400, 12, generator=g) + (shift if layer == "flat" else 0.0)
            acc.observe(layer, acts, {"token": tok})
        with StageWriter(path, stage, "new", {"model": "m"}) as w:
            w.commit(acc, {"units": 1}, "complete")
    out = tmp_path / "r.html"
    build_report(path, out=out)
    page = out.read_text()
    rest = _without_plotlyjs(page)
    assert "none of the 12 shared neurons has a distance" in rest
    assert "12 of the shared neurons have no distance and are not drawn" in rest
    assert "Shared neurons without a distance" in rest and "before → after: 12" in rest
    assert "selected only where their activation was 0 or below" in rest
    # the live layer: 12 neurons with a distance, 6 + 6, none in both tables
    assert "<h4>6 most changed</h4>" in rest and "<h4>6 least changed</h4>" in rest
    cut = feature_label(long)
    assert cut == repr("x" * (FEATURE_CHARS - 1)) + "…"
    # whole only in the explorer's data (it cuts when it shows) and in the chips' tooltips
    shown = re.sub(r'<script type="application/json".*?</script>', "", rest, flags=re.S)
    assert long not in shown.replace(f'title="{long}"', "") and html.escape(cut) in shown
    figures = rest.split("Plotly.newPlot(")[1:]
    assert figures and not any("&quot;" in f.split("</script>")[0] for f in figures)
    assert any('say \\"hi\\"' in f for f in figures)  # (JSON's own escape of the quote)
    dom, console, errors = (None, [], [])
    if Path(CHROMIUM).exists():
        script = """
          window.txrayShowNeuron("live", 0);
          var feats = Array.from(document.querySelectorAll("#ex-out .feat")).map(
            function (e) { return e.firstChild.textContent.trim(); });
          document.body.setAttribute("data-log", JSON.stringify(feats));
        """
        dom, console, errors = render_in_chromium(out, tmp_path, script=script)
        assert errors == [] and console == []
        shown = set(json.loads(html.unescape(re.search(r'data-log="([^"]*)"', dom).group(1))))
        assert shown <= {feature_label(w) for w in words} and len(shown) >= 3, shown


def test_stage_names_with_spaces_are_named_by_commas(tmp_path):
    """`--stages 'epoch 1,epoch 2'` was split at the spaces into stages that do not exist."""
    store = make_pos_store(tmp_path / "s.zarr", stages=("epoch 1", "epoch 2"), layers=("enc.0",))
    for option in ("--stages", "--pairs"):
        value = "epoch 1,epoch 2" if option == "--stages" else "epoch 1:epoch 2"
        out = run_cli("report", store, option, value, "--out", tmp_path / "r.html")
        assert "; pairs epoch 1 → epoch 2;" in out, out
    assert build_report(store, pairs="epoch 1:epoch 2", out=tmp_path / "p.html").pairs == [
        ("epoch 1", "epoch 2")]
