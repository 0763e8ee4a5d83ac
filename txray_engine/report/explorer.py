"""The neuron explorer: top features per stage and stream of any embedded neuron, as compact JSON
inside the page plus a small script (no external code)."""

from __future__ import annotations

import json

import numpy as np

from ..features.text import printable
from .data import FEATURE_CHARS, ReportData
from .tables import esc


def _round(values, digits: int = 4) -> list:
    return [None if not np.isfinite(v) else float(f"{v:.{digits}g}") for v in
            np.asarray(values, dtype=np.float64)]


def _kept(data: ReportData, layer: str) -> tuple[int, np.ndarray]:
    """Layer width and the neurons embedded (all, or those with the most mass over the stages)."""
    views = [data.layer(s, layer) for s in data.stages]
    n = max(v.n_neurons for v in views)
    total = np.zeros(n)
    for v in views:
        total[:v.n_neurons] += np.asarray(v.neuron_mass, dtype=np.float64)
    if n <= data.limits.max_neurons:
        return n, np.arange(n)
    top = np.argsort(-total, kind="stable")[:data.limits.max_neurons]
    return n, np.sort(top)


def _stream_payload(data: ReportData, layer: str, stream: str, keep: np.ndarray) -> dict:
    """Strings once in a table; per stage and kept neuron a flat ``[id, ‰, id, ‰, …]``."""
    strings: list[str] = []
    index: dict[str, int] = {}
    top = {}
    k = data.limits.explorer_features
    for s in data.stages:
        view = data.view(s, layer, stream)
        if view is None:
            continue
        ids, shares = data.top(s, layer, stream)
        ok = keep[keep < ids.shape[0]]
        ids, shares = ids[ok, :k], shares[ok, :k]
        used = np.unique(ids[ids >= 0])
        vocab = view.vocab
        glob = np.full(int(used.max()) + 1 if used.size else 1, -1, dtype=np.int64)
        for f in used:
            word = vocab.shown(vocab[int(f)])
            if word not in index:
                index[word] = len(strings)
                strings.append(word)
            glob[f] = index[word]
        # each row's features first (in order), then pairs (global id, ‰) cut at its length
        first = np.argsort(ids < 0, axis=1, kind="stable")
        ids, shares = np.take_along_axis(ids, first, 1), np.take_along_axis(shares, first, 1)
        pairs = np.empty((ids.shape[0], 2 * ids.shape[1]), dtype=np.int64)
        pairs[:, 0::2] = glob[np.maximum(ids, 0)]
        pairs[:, 1::2] = np.rint(shares * 1000)
        rows = [row[:2 * n] for row, n in zip(pairs.tolist(), (ids >= 0).sum(1).tolist())]
        rows += [[]] * (keep.size - ok.size)  # neurons beyond this stage's width
        top[s] = rows
    return {"name": stream, "strings": strings, "top": top}


EXAMPLES_SHOWN = 3


def _examples_payload(data: ReportData, layer: str, keep: np.ndarray) -> dict | None:
    """Per stage and kept neuron up to three ``[value, before, token, after]``: the position's
    token between the text around it (byte-level tokens decoded); None without examples."""
    per_stage = {}
    for s in data.stages:
        lv = data.layer(s, layer)
        ex = lv.examples
        if ex is None or "token" not in lv.stage.streams:
            continue
        vocab = lv.stage.vocab("token")
        rows = []
        for n in keep:
            items = []
            if n < lv.n_neurons:
                for j in range(min(EXAMPLES_SHOWN, ex["examples_value"].shape[1])):
                    v = float(ex["examples_value"][n, j])
                    if not np.isfinite(v):
                        break
                    items.append([float(f"{v:.4g}"),  # (a corpus's control characters and
                                  *map(printable,  # right-to-left overrides shown escaped)
                                       vocab.window(ex["examples_context"][n, j]))])
            rows.append(items)
        per_stage[s] = rows
    return {"stages": per_stage} if per_stage else None


def explorer_payload(data: ReportData) -> dict:
    """Everything the explorer shows, for every chosen layer (capped at ``max_neurons`` each)."""
    layers = []
    for layer in data.layers:
        n, keep = _kept(data, layer)
        if keep.size < n:
            data.notes.append(f"Neuron explorer, {layer}: {keep.size:,} of {n:,} neurons embedded "
                              f"(those with the most activation mass over all stages); read any "
                              f"other with `txray neurons STORE --stage S --layer L --neuron N`.")
        stats = {}
        for s in data.stages:
            lv = data.layer(s, layer)
            ok = keep[keep < lv.n_neurons]
            count = np.zeros(keep.size, dtype=np.int64)
            mass = np.zeros(keep.size)
            count[:ok.size] = np.asarray(lv.neuron_count)[ok]
            mass[:ok.size] = np.asarray(lv.neuron_mass, dtype=np.float64)[ok]
            total = float(np.asarray(lv.neuron_mass, dtype=np.float64).sum()) or 1.0
            stats[s] = {"count": count.tolist(), "mass": _round(mass),
                        "share": _round(mass / total, 3), "tokens": lv.tokens}
        hellinger = []
        for a, b in data.pairs:
            cmp = data.comparison(a, b, layer)
            if cmp is not None:
                h = np.full(keep.size, np.nan)
                ok = keep[keep < cmp.n_neurons]
                h[:ok.size] = cmp["hellinger"][ok]
                hellinger.append({"a": a, "b": b, "values": _round(h, 3)})
        start = keep[int(np.argmax(stats[data.stages[0]]["count"]))] if keep.size else 0
        layers.append({"name": layer, "n": n,
                       "neurons": None if keep.size == n else keep.tolist(),
                       "start": int(start), "stats": stats, "hellinger": hellinger,
                       "stream": data.stream,
                       "streams": [_stream_payload(data, layer, st, keep)
                                   for st in data.all_streams],
                       "examples": _examples_payload(data, layer, keep)})
    return {"stages": data.stages, "features": data.limits.explorer_features,
            "label_chars": FEATURE_CHARS, "layers": layers}


def explorer_html(payload: dict) -> str:
    """Controls, the output area, the JSON payload and the script."""
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    data = data.replace("<", "\\u003c")  # (valid JSON that no "</script>" or "<!--" can end)
    return (
        '<div class="explorer"><div class="controls">'
        '<label>layer <select id="ex-layer"></select></label> '
        '<label>neuron <input id="ex-neuron" type="number" min="0" step="1"></label> '
        '<button type="button" id="ex-prev" title="previous embedded neuron">&#9664;</button>'
        '<button type="button" id="ex-next" title="next embedded neuron">&#9654;</button>'
        f' <span class="muted">top {int(payload["features"])} features per stage and stream'
        '</span></div><div id="ex-out"></div></div>'
        f'<script type="application/json" id="txray-explorer-data">{data}</script>'
        f"<script>{EXPLORER_JS}</script>")


def explorer_intro(data: ReportData) -> str:
    # stages whose contexts cannot be shown (no examples kept, or no token stream to show)
    without = [s for s in data.stages if "token" not in data.stage_objs[s].streams or
               all(data.layer(s, lay).examples is None for lay in data.layers)]
    return ("<p>Pick a layer and a neuron id (or click a neuron in a table or a point of a plot) "
            "to see its strongest features in every stage, share of its activation mass per "
            f"feature. Stages: {esc(', '.join(data.stages))}.</p>"
            + ("<p>Where the stage was collected with <code>--examples M</code>, the explorer also "
               "shows the neuron's strongest activations with the tokens around them (the "
               "position itself in bold)" + (
                   f"; not for {esc(', '.join(without))} (collected without examples or without "
                   f"a token stream)" if without else "") + ".</p>" if data.has_examples() else
               "<p class=note>No stage here was collected with <code>--examples M</code>, so "
               "the explorer shows features only (no top activating contexts).</p>"))


EXPLORER_JS = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("txray-explorer-data").textContent);
  var layerSel = document.getElementById("ex-layer");
  var input = document.getElementById("ex-neuron");
  var out = document.getElementById("ex-out");
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function pos(L, n) {
    if (!L.neurons) return (n >= 0 && n < L.n) ? n : -1;
    var lo = 0, hi = L.neurons.length - 1;
    while (lo <= hi) {
      var mid = (lo + hi) >> 1, v = L.neurons[mid];
      if (v === n) return mid;
      if (v < n) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
  }
  function row(cells, head) {
    var tr = el("tr");
    cells.forEach(function (c) { var td = el(head ? "th" : "td"); if (c instanceof Node) td.appendChild(c); else td.textContent = c; tr.appendChild(td); });
    return tr;
  }
  function table(head, rows, cls) {
    var t = el("table", null, "grid " + (cls || "")), th = el("thead"), tb = el("tbody");
    th.appendChild(row(head, true)); rows.forEach(function (r) { tb.appendChild(row(r)); });
    t.appendChild(th); t.appendChild(tb); return t;
  }
  function pyRepr(t) {  // Python's repr of a string, as the tables show features: what is not
    // printable (controls, formats, separators but the space, unassigned) escaped as Python does
    var q = t.indexOf("'") >= 0 && t.indexOf('"') < 0 ? '"' : "'";
    var body = t.replace(/[\\\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/gu, function (c) {
      if (c === " ") return c;
      var named = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[c];
      if (named) return named;
      var cp = c.codePointAt(0), hex = cp.toString(16);
      return cp < 0x100 ? "\\x" + ("0" + hex).slice(-2) : cp < 0x10000 ?
        "\\u" + ("000" + hex).slice(-4) : "\\U" + ("0000000" + hex).slice(-8);
    });
    if (q === "'") body = body.replace(/'/g, "\\'");
    return q + body + q;
  }
  function label(t) {  // cut as the tables cut (data.FEATURE_CHARS)
    var n = D.label_chars, chars = Array.from(t);
    return chars.length <= n ? pyRepr(t) : pyRepr(chars.slice(0, n - 1).join("")) + "\u2026";
  }
  function feat(strings, id, pm) {
    var s = el("span", null, "feat");
    if (Array.from(strings[id]).length > D.label_chars) s.title = strings[id];
    s.appendChild(el("bdi", label(strings[id])));  // (right-to-left text keeps its share after it)
    s.appendChild(document.createTextNode(" "));
    s.appendChild(el("small", (pm / 10).toFixed(1) + "%"));
    return s;
  }
  function show() {
    var L = D.layers[+layerSel.value || 0];
    input.max = L.n - 1;
    var n = parseInt(input.value, 10);
    out.replaceChildren();
    if (isNaN(n) || n < 0 || n >= L.n) {
      out.appendChild(el("p", "Neuron ids of " + L.name + " run from 0 to " + (L.n - 1) + ".", "note"));
      return;
    }
    var p = pos(L, n);
    if (p < 0) {
      out.appendChild(el("p", "Neuron " + n + " is not embedded in this report (only the " + L.neurons.length +
        " neurons with the most activation mass are); read it with: txray neurons STORE" +
        " --stage S --layer " + L.name + " --neuron " + n, "note"));
      return;
    }
    out.appendChild(el("h4", L.name + ", neuron " + n));
    var rows = D.stages.map(function (s) {
      var st = L.stats[s];
      return [s, st.count[p].toLocaleString(), st.mass[p] === null ? "–" : String(st.mass[p]),
              st.share[p] === null ? "–" : (100 * st.share[p]).toFixed(2) + "%"];
    });
    out.appendChild(table(["stage", "selected (positions)", "activation mass", "share of layer mass"], rows, "narrow"));
    if (L.hellinger.length) {
      out.appendChild(table(["pair", "Hellinger (" + L.stream + ")"], L.hellinger.map(function (h) {
        var v = h.values[p];
        return [h.a + " \u2192 " + h.b, v === null ? "none (not alive in both, or no feature counted in one)" : v.toFixed(3)];
      }), "narrow"));
    }
    var box = el("div", null, "streams");
    out.appendChild(box);
    L.streams.forEach(function (S) {
      var col = el("div", null, "stream");
      box.appendChild(col);
      var stages = D.stages.filter(function (s) { return S.top[s]; });
      var k = 0;
      stages.forEach(function (s) { k = Math.max(k, S.top[s][p].length / 2); });
      col.appendChild(el("h5", "stream " + S.name));
      if (!k) { col.appendChild(el("p", "no features in any stage (never selected, or none counted: " +
        "activations of 0 or below weigh nothing by mass)", "muted")); return; }
      var rs = [];
      for (var r = 0; r < k; r++) {
        rs.push([String(r + 1)].concat(stages.map(function (s) {
          var t = S.top[s][p];
          return 2 * r < t.length ? feat(S.strings, t[2 * r], t[2 * r + 1]) : "";
        })));
      }
      col.appendChild(table(["#"].concat(stages), rs, "features"));
    });
    contexts(L, p);
  }
  function contexts(L, p) {
    var E = L.examples;
    if (!E) return;
    var box = el("div", null, "contexts");
    box.appendChild(el("h5", "top activating contexts"));
    D.stages.forEach(function (s) {
      var items = E.stages[s] ? E.stages[s][p] : null;
      if (!items || !items.length) return;
      box.appendChild(el("div", s, "muted"));
      items.forEach(function (it) {
        var line = el("div", null, "ctx");
        line.appendChild(el("small", it[0].toFixed(3) + "  "));
        line.appendChild(el("span", it[1]));
        line.appendChild(el("b", it[2]));
        line.appendChild(el("span", it[3]));
        box.appendChild(line);
      });
    });
    out.appendChild(box);
  }
  function step(d) {
    var L = D.layers[+layerSel.value || 0], n = parseInt(input.value, 10);
    if (isNaN(n)) n = L.start;
    if (!L.neurons) { n = Math.min(L.n - 1, Math.max(0, n + d)); }
    else {
      var list = L.neurons, i = 0;
      while (i < list.length && list[i] < n) i++;
      if (d > 0) i = (i < list.length && list[i] === n) ? i + 1 : i; else i = i - 1;
      n = list[Math.min(list.length - 1, Math.max(0, i))];
    }
    input.value = n; show();
  }
  window.txrayShowNeuron = function (layer, n, scroll) {
    for (var i = 0; i < D.layers.length; i++) if (D.layers[i].name === layer) layerSel.value = i;
    input.value = n; show();
    if (scroll) document.getElementById("explorer").scrollIntoView();
  };
  D.layers.forEach(function (L, i) {
    var o = el("option", L.name + " (" + L.n + " neurons)"); o.value = i; layerSel.appendChild(o);
  });
  layerSel.addEventListener("change", function () {
    input.value = D.layers[+layerSel.value].start; show();
  });
  input.addEventListener("input", show);
  document.getElementById("ex-prev").addEventListener("click", function () { step(-1); });
  document.getElementById("ex-next").addEventListener("click", function () { step(1); });
  document.querySelectorAll("a.nlink").forEach(function (a) {
    a.addEventListener("click", function (ev) {
      ev.preventDefault(); window.txrayShowNeuron(a.dataset.layer, +a.dataset.neuron, true);
    });
  });
  document.querySelectorAll(".fig[data-layer] .plotly-graph-div").forEach(function (gd) {
    var layer = gd.closest(".fig").dataset.layer;
    if (gd.on) gd.on("plotly_click", function (ev) {
      var pt = ev && ev.points && ev.points[0];
      if (pt && pt.customdata !== undefined) {
        var n = Array.isArray(pt.customdata) ? pt.customdata[0] : pt.customdata;
        window.txrayShowNeuron(layer, +n, true);
      }
    });
  });
  if (D.layers.length) { layerSel.value = 0; input.value = D.layers[0].start; show(); }
})();
"""
