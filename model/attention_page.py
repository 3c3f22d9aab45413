"""One self-contained HTML page that shows what the model attends to.

    write_attention_page(path, model, tokenizer, tokens) -> Path

One forward pass through the explicit attention path (model.attention_maps) gives every
layer's weights, (1, nh, T, T). They go into the page as JSON next to the tokens' text, and a
little plain JavaScript draws them: click (or hover) a token to see how much it attends to
every earlier token, pick a layer and a head (or the mean over heads), and read the whole
causal matrix as a heatmap (rows = queries, columns = keys). If the run left a metrics log,
its loss curve is drawn too, as inline SVG.

The page loads nothing: no scripts, styles or fonts from anywhere (its Content-Security-Policy
forbids it), so it opens from disk and can be mailed around. To stay light enough for any
browser it shows at most the last max_tokens tokens, and fewer still for a very deep/wide
model (MAX_WEIGHTS numbers in all); the page says so when it does.
"""

import html
import json
import math
import os
import re
import tempfile
from pathlib import Path

import torch

MAX_TOKENS = 256          # default cap on the tokens shown
MAX_WEIGHTS = 2_000_000   # cap on the numbers embedded (all layers and heads): a few MB of page
SCALE = 10_000            # weights are stored as integers in units of 1/SCALE, i.e. 4 decimals


class AttentionPageError(ValueError):
    """Something the caller can fix (bad tokens, an unwritable path); the message says what."""


def write_attention_page(path, model, tokenizer, tokens, metrics_path=None,
                         max_tokens: int = MAX_TOKENS, prompt_len: int | None = None) -> Path:
    """Write the page for `tokens` (the prompt followed by what was generated) to `path`.

    tokenizer: anything with decode(list[int]) -> str. metrics_path: the run's metrics.jsonl,
    or None for no loss curve. prompt_len: how many leading tokens were the prompt (they are
    marked on the page), or None if unknown. Returns the path written."""
    path = Path(path)
    if path.is_dir():
        raise AttentionPageError(f"{path} is a folder; give a file path for the page, e.g. {path / 'attention.html'}")
    data = attention_data(model, tokenizer, tokens, max_tokens, prompt_len)
    curve = loss_section(metrics_path) if metrics_path is not None else ""
    page = render_page(data, curve)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # temp file + rename: a crash never leaves a half-written page where an old one was
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(page)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            os.remove(tmp)
            raise
    except OSError as e:
        raise AttentionPageError(f"cannot write the attention page to {path}: {e.strerror or e}; "
                                 f"choose a writable path") from None
    return path


# -----------------------------------------------------------------------------
# the numbers: one forward pass, weights kept exactly as the model computed them (rounded)

def window_size(n_tokens: int, block_size: int, max_tokens: int, n_maps: int):
    """How many of the last tokens to show, and why not more (None if all are shown).
    n_maps = n_layer * n_head causal matrices of T(T+1)/2 numbers each."""
    fit = int((math.sqrt(1 + 8 * MAX_WEIGHTS / n_maps) - 1) / 2)   # largest T within MAX_WEIGHTS
    limits = [(block_size, f"the model sees at most block_size = {block_size} tokens at once"),
              (max_tokens, f"the page shows at most max_tokens = {max_tokens}"),
              (fit, f"a model with {n_maps} layer x head maps fits {fit} tokens in the page's "
                    f"budget of {MAX_WEIGHTS:,} weights")]
    T, why = min(limits, key=lambda lw: lw[0])
    return (n_tokens, None) if n_tokens <= T else (T, why)


@torch.no_grad()
def attention_data(model, tokenizer, tokens, max_tokens: int = MAX_TOKENS, prompt_len=None) -> dict:
    """Everything the page embeds, as JSON-ready values. weights[l][h][i] lists query i's
    weights over keys 0..i (the causal lower triangle), as integers in units of 1/SCALE."""
    cfg = model.config
    tokens = [int(t) for t in tokens]
    if not tokens:
        raise AttentionPageError("no tokens to show: the page needs the prompt and/or the sample "
                                 "to hold at least one token")
    bad = [t for t in tokens if not 0 <= t < cfg.vocab_size]
    if bad:
        raise AttentionPageError(f"token id {bad[0]} is outside the model's vocabulary of {cfg.vocab_size}: "
                                 f"the tokens and the model come from different tokenizers")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise AttentionPageError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    T, why = window_size(len(tokens), cfg.block_size, max_tokens, cfg.n_layer * cfg.n_head)
    first = len(tokens) - T                                   # absolute position of the first shown
    shown = tokens[first:]
    device = next(model.parameters()).device
    idx = torch.tensor([shown], dtype=torch.long, device=device)          # (1, T)
    was_training = model.training
    model.eval()  # dropout off: show the weights the model really uses when it predicts
    try:
        maps = model.attention_maps(idx)                      # n_layer x (1, nh, T, T)
    finally:
        model.train(was_training)
    weights = []
    for w in maps:
        w = (w[0].float() * SCALE).round().long().cpu()      # (nh, T, T), integers
        weights.append([[w[h, i, :i + 1].tolist() for i in range(T)] for h in range(w.size(0))])
    n_prompt = None if prompt_len is None else max(0, min(int(prompt_len), len(tokens)) - first)
    return {"tokens": [tokenizer.decode([t]) for t in shown], "ids": shown, "first": first,
            "total": len(tokens), "window_reason": why, "prompt_len": n_prompt,
            "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_kv_head": cfg.n_kv_head,
            "n_embd": cfg.n_embd, "block_size": cfg.block_size, "pos_emb": cfg.pos_emb,
            "scale": SCALE, "weights": weights}


# -----------------------------------------------------------------------------
# the loss curve, from out_dir/metrics.jsonl, as a static SVG

def read_metrics(path):
    """-> (train [(iter, loss)], evals [(iter, train_loss, val_loss)], n_bad_lines).
    A resumed run appends to the same log, so a later line for an iteration replaces an
    earlier one. Lines that do not parse (say, cut short by a crash) are counted, not fatal."""
    train, evals, bad = {}, {}, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if rec.get("kind") == "train":
                    train[int(rec["iter"])] = float(rec["loss"])
                elif rec.get("kind") == "eval":
                    evals[int(rec["iter"])] = (float(rec["train_loss"]), float(rec["val_loss"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                bad += 1
    return sorted(train.items()), [(i, a, b) for i, (a, b) in sorted(evals.items())], bad


def nice_ticks(lo: float, hi: float, n: int = 5) -> list:
    """About n round-numbered ticks (steps of 1, 2 or 5 x 10^k) covering [lo, hi]."""
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    count = math.ceil((hi - start) / step - 1e-9)
    return [start + k * step for k in range(count + 1)]


def loss_svg(train, evals, width=640, height=260) -> str:
    """Train loss (every logged step) and the eval's train/val loss against iteration."""
    series = [("train loss (each log step)", "#7aa6d8", 1.2, [(i, l) for i, l in train]),
              ("train loss (eval)", "#1f4e9c", 2, [(i, a) for i, a, _ in evals]),
              ("val loss (eval)", "#e0701b", 2, [(i, b) for i, _, b in evals])]
    series = [(name, c, sw, [(x, y) for x, y in pts if math.isfinite(y)]) for name, c, sw, pts in series]
    series = [s for s in series if s[3]]
    pts = [p for s in series for p in s[3]]
    if not pts:
        return ""
    xt = nice_ticks(min(x for x, _ in pts), max(x for x, _ in pts))
    yt = nice_ticks(min(y for _, y in pts), max(y for _, y in pts))
    left, right, top, bottom = 52, 16, 14, 40
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - xt[0]) / (xt[-1] - xt[0]) * pw

    def sy(y):
        return top + (yt[-1] - y) / (yt[-1] - yt[0]) * ph

    out = [f'<svg id="loss-svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="loss against iteration">']
    for y in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.4g}</text>')
    for x in xt:
        out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
                   f'<text x="{sx(x):.1f}" y="{top + ph + 16}" text-anchor="middle">{x:,.6g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">iteration</text>'
               f'<text x="12" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 12 {top + ph / 2})">loss</text>')
    for name, colour, sw, s in series:
        step = max(1, len(s) // 2000)  # a long run's log thins out to ~2000 points per line
        s = s[::step] + ([s[-1]] if (len(s) - 1) % step else [])
        xy = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        out.append(f'<polyline points="{xy}" fill="none" stroke="{colour}" stroke-width="{sw}" '
                   f'data-series="{html.escape(name)}"><title>{html.escape(name)}</title></polyline>')
        if len(s) <= 60 and "eval" in name:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in s]
    return "\n".join(out) + "\n</svg>"


def loss_section(metrics_path) -> str:
    """The HTML of the loss-curve section, or a line saying why there is none."""
    path = Path(metrics_path)
    if not path.is_file():
        return f'<p class="note">No loss curve: no metrics log at {html.escape(str(path))} (train.py writes one).</p>'
    try:
        train, evals, bad = read_metrics(path)
    except OSError as e:
        return f'<p class="note">No loss curve: cannot read {html.escape(str(path))} ({html.escape(str(e))}).</p>'
    svg = loss_svg(train, evals)
    if not svg:
        return f'<p class="note">No loss curve: {html.escape(str(path))} holds no train or eval losses yet.</p>'
    legend = ('<p class="legend"><span class="sw" style="background:#7aa6d8"></span>train loss, each log step '
              '<span class="sw" style="background:#1f4e9c"></span>train loss at eval '
              '<span class="sw" style="background:#e0701b"></span>val loss at eval</p>')
    skipped = f'<p class="note">{bad} unreadable line(s) in the log were skipped.</p>' if bad else ""
    last = f"last eval: iter {evals[-1][0]:,}, val loss {evals[-1][2]:.4f}. " if evals else ""
    return (f'<h2>The run\'s loss</h2>\n<p>{last}From {html.escape(path.name)}: {len(train):,} train '
            f'and {len(evals):,} eval records.</p>\n{legend}\n{svg}\n{skipped}')


# -----------------------------------------------------------------------------
# the page

def summary(d: dict) -> str:
    """The static lines about the model and which tokens are shown."""
    kv = d["n_kv_head"]
    heads = (f"{d['n_head']} heads" if kv == d["n_head"] else
             f"{d['n_head']} query heads sharing {kv} key/value head{'s' if kv > 1 else ''} "
             f"({'MQA' if kv == 1 else 'GQA'})")
    model = (f"Model: {d['n_layer']} layer{'s' if d['n_layer'] > 1 else ''} x {heads}, "
             f"n_embd = {d['n_embd']}, {'rotary' if d['pos_emb'] == 'rope' else 'learned'} positions, "
             f"block_size = {d['block_size']}.")
    T = len(d["tokens"])
    if d["window_reason"] is None:
        shown = f"All {T:,} tokens are shown; the model ran once on exactly these."
    else:
        shown = (f"Showing the last {T:,} of {d['total']:,} tokens, because {d['window_reason']}. "
                 f"The model ran once on exactly these {T:,} (positions counted from the first shown), "
                 f"so the weights are the ones it computes for this window.")
    if d["prompt_len"]:
        shown += f" Underlined: the prompt ({d['prompt_len']:,} tokens shown); the rest was generated."
    elif d["prompt_len"] == 0:
        shown += " The prompt lies before this window: every token shown was generated."
    return f'<p id="model-line">{html.escape(model)}</p>\n<p id="window-note">{html.escape(shown)}</p>'


def render_page(d: dict, loss_html: str) -> str:
    # </script> (or any tag) inside a token's text must not end the JSON's script element
    payload = json.dumps(d, ensure_ascii=False, separators=(",", ":"))
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = "".join(d["tokens"])
    title = " ".join(text.split())[:60] or "attention"
    parts = {"TITLE": html.escape(title), "SUMMARY": summary(d), "SCALE": str(d["scale"]),
             "LOSS": f'<section id="loss">{loss_html}</section>' if loss_html else "", "DATA": payload}
    # one pass, so a token that happens to read "__DATA__" is never substituted again
    return re.sub(r"__([A-Z]+)__", lambda m: parts[m.group(1)], TEMPLATE)


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<link rel="icon" href="data:,">
<title>Attention: __TITLE__</title>
<style>
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1d1d1f; background: #fafafa; margin: 0; }
main { max-width: 1120px; margin: 0 auto; padding: 18px 24px 40px; }
h1 { font-size: 24px; margin: 4px 0 6px; }
h2 { font-size: 18px; margin: 26px 0 6px; }
p { margin: 6px 0; }
.lead { max-width: 820px; }
.note, #model-line, #window-note { color: #555; font-size: 14px; }
.panel { background: #fff; border: 1px solid #e3e3e3; border-radius: 8px; padding: 12px 14px; }
#controls { display: flex; flex-wrap: wrap; gap: 8px 20px; align-items: center; margin: 14px 0 10px;
            position: sticky; top: 0; z-index: 2; background: #fafafa; padding: 8px 0; }
#controls label { font-weight: 600; }
select { font: inherit; padding: 2px 6px; margin-left: 6px; }
.hint { color: #666; font-size: 13px; }
#tokens { display: flex; flex-wrap: wrap; gap: 4px 1px; align-items: flex-start;
          font: 16px/1.25 ui-monospace, "SF Mono", Menlo, Consolas, "DejaVu Sans Mono", monospace; }
.tok { display: inline-flex; flex-direction: column; align-items: center; min-width: 20px;
       padding: 2px 1px 0; border-radius: 4px; border: 1px solid transparent; cursor: pointer; }
.tok .t { white-space: pre; padding: 0 1px; }
/* a fixed-size label: a box never changes width when its weight changes, so nothing moves
   under the mouse (hover would otherwise jump from token to token) */
.tok .w { font: 10px/12px system-ui, sans-serif; color: #5a3b00; height: 12px; width: 20px;
          text-align: center; overflow: hidden; }
.tok .ws { color: #b0b0b0; }
.tok.prompt .t { text-decoration: underline 2px #8fb3e0; text-underline-offset: 3px; }
.tok.sel { border-color: #1565d8; box-shadow: 0 0 0 1px #1565d8; }
.tok.future { opacity: 0.28; }
.tok:hover { border-color: #999; }
.br { flex-basis: 100%; height: 0; }
#below { display: flex; flex-wrap: wrap; gap: 18px; margin-top: 16px; align-items: flex-start; }
#matrix-box { flex: 0 0 auto; }
#readout { flex: 1 1 300px; min-width: 280px; }
#readout h3 { font-size: 15px; margin: 0 0 8px; }
.q { font-family: ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace; background: #eef3fb;
     padding: 0 4px; border-radius: 3px; white-space: pre; }
table.top { border-collapse: collapse; width: 100%; font-size: 14px; }
table.top td { padding: 2px 6px; }
table.top td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { height: 10px; background: #f29a2e; border-radius: 2px; }
#heatmap { display: block; cursor: crosshair; }
#tip { position: fixed; pointer-events: none; background: #222; color: #fff; font-size: 12px;
       padding: 3px 7px; border-radius: 4px; display: none; white-space: pre; z-index: 5; }
.legend { font-size: 13px; color: #444; }
.sw { display: inline-block; width: 14px; height: 10px; margin: 0 4px 0 10px; border-radius: 2px;
      vertical-align: baseline; }
.sw.masked { background: repeating-linear-gradient(45deg, #eee 0 3px, #cfcfcf 3px 4px); }
#colorbar { vertical-align: middle; margin: 0 6px; border: 1px solid #ccc; }
#loss-svg text { font-size: 11px; fill: #444; }
#loss-svg line.grid { stroke: #e6e6e6; }
footer { margin-top: 28px; color: #777; font-size: 13px; }
</style>
</head>
<body>
<main>
<h1>What the model attends to</h1>
<p class="lead">Each token asks a question (its query) and every earlier token offers an answer (its key):
the attention weights say how much of each earlier token's value flows into this one. A GPT is
<em>causal</em>: a token sees only itself and the tokens before it, and its weights over those sum to 1.
<b>Click a token</b> (or hover over one) to see how much it attends to every earlier token.</p>
__SUMMARY__
<noscript><p><b>This page needs JavaScript to draw the weights.</b> They are embedded in its source as JSON.</p></noscript>
<div id="controls">
  <span><label for="layer">Layer</label><select id="layer"></select></span>
  <span><label for="head">Head</label><select id="head"></select></span>
  <span class="hint">click a token to pin it, hover to preview; &larr; &rarr; step through the tokens</span>
</div>
<div id="tokens" class="panel" aria-label="tokens"></div>
<div id="below">
  <div id="matrix-box" class="panel">
    <h3 id="matrix-title" style="margin:0 0 4px;font-size:15px"></h3>
    <p class="legend">Rows = queries, columns = keys. Brighter = more weight.
      <span class="sw masked"></span>masked (a key in the query's future: weight 0)<br>
      weight 0<canvas id="colorbar" width="160" height="10"></canvas>1</p>
    <canvas id="heatmap"></canvas>
  </div>
  <div id="readout" class="panel"></div>
</div>
__LOSS__
<footer>Written by model/attention_page.py from one forward pass through the model's explicit attention
path (model.attention_maps). Weights are rounded to 1/__SCALE__; the numbers under the tokens to 2 decimals.</footer>
</main>
<div id="tip"></div>
<script id="attn-data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("attn-data").textContent);
const T = D.tokens.length, H = D.n_head, L = D.n_layer;
const $ = (id) => document.getElementById(id);
const layerSel = $("layer"), headSel = $("head"), canvas = $("heatmap"), tip = $("tip");
let pinned = T - 1;            // the clicked query token; hovering previews another
let current = T - 1;           // the query on screen now

// ---- the numbers: rows of the causal matrix for the chosen layer and head (or mean)
const cache = new Map();
function matrix(l, h) {        // -> T rows, row i = weights of query i over keys 0..i
  const key = l + "/" + h;
  if (!cache.has(key)) {
    let rows;
    if (h === "mean") {        // the plain average of the heads' weights: rows still sum to 1
      rows = D.weights[l][0].map((r, i) => r.map((_, j) => {
        let s = 0;
        for (let k = 0; k < H; k++) s += D.weights[l][k][i][j];
        return s / H / D.scale;
      }));
    } else {
      rows = D.weights[l][+h].map((r) => r.map((v) => v / D.scale));
    }
    cache.set(key, rows);
  }
  return cache.get(key);
}
const layer = () => +layerSel.value;
const head = () => headSel.value;

// ---- how a token looks: whitespace made visible, newlines also break the line
function visible(s) {
  const out = [];
  for (const c of s) {
    const m = c === " " ? "\u00b7" : c === "\n" ? "\u21b5" : c === "\t" ? "\u2192" : c === "\r" ? "\u240d"
            : c.charCodeAt(0) < 32 ? "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0") : null;
    out.push(m === null ? [c, false] : [m, true]);
  }
  return out.length ? out : [["\u2205", true]];
}
function fill(el, s) {         // el gets s with whitespace symbols greyed
  el.textContent = "";
  for (const [c, ws] of visible(s)) {
    if (ws) { const sp = document.createElement("span"); sp.className = "ws"; sp.textContent = c; el.appendChild(sp); }
    else el.appendChild(document.createTextNode(c));
  }
}
const plain = (s) => visible(s).map((p) => p[0]).join("");

// ---- colours: heatmap "magma"-like, dark = 0 to bright = 1; tokens get an orange wash
const STOPS = [[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]];
const LUT = [];
for (let k = 0; k < 256; k++) {
  const x = k / 255 * (STOPS.length - 1), a = Math.min(Math.floor(x), STOPS.length - 2), f = x - a;
  const c = STOPS[a].map((v, n) => Math.round(v + (STOPS[a + 1][n] - v) * f));
  LUT.push("rgb(" + c.join(",") + ")");
}
const heat = (w) => LUT[Math.max(0, Math.min(255, Math.round(w * 255)))];
const wash = (w) => "rgba(242, 140, 28, " + (0.08 + 0.92 * Math.sqrt(w)).toFixed(3) + ")";  // sqrt: small weights still show

// ---- controls
for (let l = 0; l < L; l++) layerSel.add(new Option("layer " + l + (l === 0 ? " (first)" : l === L - 1 ? " (last)" : ""), l));
const group = H / D.n_kv_head;
for (let h = 0; h < H; h++) {
  const kv = group > 1 ? " (k/v head " + Math.floor(h / group) + ")" : "";
  headSel.add(new Option("head " + h + kv, h));
}
headSel.add(new Option("mean over heads", "mean"));

// ---- the tokens
const toks = [], labels = [];
D.tokens.forEach((s, i) => {
  const el = document.createElement("span");
  el.className = "tok" + (D.prompt_len !== null && i < D.prompt_len ? " prompt" : "");
  el.dataset.i = i;
  const t = document.createElement("span"); t.className = "t"; fill(t, s);
  const w = document.createElement("span"); w.className = "w";
  el.append(t, w);
  el.addEventListener("click", () => pin(i));
  el.addEventListener("mouseenter", () => show(i));
  el.addEventListener("mouseleave", () => show(pinned));
  $("tokens").appendChild(el);
  toks.push(el); labels.push(w);
  if (s.includes("\n")) { const br = document.createElement("div"); br.className = "br"; $("tokens").appendChild(br); }
});

// ---- the heatmap: drawn once per layer/head into an offscreen canvas, then copied
const cell = Math.max(2, Math.min(26, Math.floor(560 / T)));
const pad = cell >= 12 ? 30 : 34;   // room for the axis labels
const size = pad + T * cell + 2, dpr = window.devicePixelRatio || 1;
canvas.width = Math.round(size * dpr); canvas.height = Math.round(size * dpr);
canvas.style.width = size + "px"; canvas.style.height = size + "px";
canvas.dataset.cell = cell; canvas.dataset.pad = pad;
const ctx = canvas.getContext("2d");
let drawn = null, drawnKey = null;
function hatch(c) {
  const p = document.createElement("canvas"); p.width = p.height = 6;
  const g = p.getContext("2d");
  g.fillStyle = "#eeeeee"; g.fillRect(0, 0, 6, 6);
  g.strokeStyle = "#cfcfcf"; g.lineWidth = 1;
  g.beginPath(); g.moveTo(0, 6); g.lineTo(6, 0); g.stroke();
  return c.createPattern(p, "repeat");
}
function drawMatrix() {
  const key = layer() + "/" + head();
  if (drawnKey === key) return drawn;
  const rows = matrix(layer(), head());
  const off = document.createElement("canvas"); off.width = canvas.width; off.height = canvas.height;
  const g = off.getContext("2d"); g.scale(dpr, dpr);
  g.fillStyle = "#fff"; g.fillRect(0, 0, size, size);
  g.fillStyle = hatch(g); g.fillRect(pad, pad, T * cell, T * cell);   // everything starts masked
  for (let i = 0; i < T; i++) for (let j = 0; j <= i; j++) {          // then the visible keys
    g.fillStyle = heat(rows[i][j]); g.fillRect(pad + j * cell, pad + i * cell, cell, cell);
  }
  g.fillStyle = "#555"; g.font = (cell >= 12 ? Math.min(13, cell - 2) : 10) + "px ui-monospace, Menlo, monospace";
  if (cell >= 12) {            // every token along both axes
    g.textAlign = "center"; g.textBaseline = "middle";
    for (let i = 0; i < T; i++) {
      const s = plain(D.tokens[i]).slice(0, 3);
      g.fillText(s, pad - 14, pad + i * cell + cell / 2);
      g.fillText(s, pad + i * cell + cell / 2, pad - 12);
    }
  } else {                     // position ticks
    const step = [5, 10, 20, 50, 100, 200, 500].find((s) => s * cell >= 28) || 1000;
    g.textAlign = "right"; g.textBaseline = "middle";
    for (let i = 0; i < T; i += step) g.fillText(i, pad - 4, pad + i * cell + cell / 2);
    g.textAlign = "center"; g.textBaseline = "bottom";
    for (let i = 0; i < T; i += step) g.fillText(i, pad + i * cell + cell / 2, pad - 3);
  }
  drawn = off; drawnKey = key;
  return off;
}
function paintMatrix(i) {
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.drawImage(drawMatrix(), 0, 0);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.strokeStyle = "#19b6ff"; ctx.lineWidth = 2;   // outline the chosen query's row
  ctx.strokeRect(pad - 1, pad + i * cell - 1, (i + 1) * cell + 2, cell + 2);
}
function cellAt(ev) {
  const r = canvas.getBoundingClientRect();
  const j = Math.floor((ev.clientX - r.left - pad) / cell), i = Math.floor((ev.clientY - r.top - pad) / cell);
  return i >= 0 && i < T && j >= 0 && j < T ? [i, j] : null;
}
canvas.addEventListener("mousemove", (ev) => {
  const ij = cellAt(ev);
  if (!ij) { tip.style.display = "none"; return; }
  const [i, j] = ij, q = '"' + plain(D.tokens[i]) + '"', k = '"' + plain(D.tokens[j]) + '"';
  tip.textContent = j <= i ? "query " + i + " " + q + "  \u2192  key " + j + " " + k + ":  " + matrix(layer(), head())[i][j].toFixed(4)
                           : "query " + i + " " + q + " cannot see key " + j + " " + k + " (its future): masked";
  tip.style.left = ev.clientX + 14 + "px"; tip.style.top = ev.clientY + 12 + "px"; tip.style.display = "block";
});
canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
canvas.addEventListener("click", (ev) => { const ij = cellAt(ev); if (ij) pin(ij[0]); });
const bar = $("colorbar").getContext("2d");
for (let x = 0; x < 160; x++) { bar.fillStyle = heat(x / 159); bar.fillRect(x, 0, 1, 10); }

// ---- showing one query: token washes, weights, the readout, the matrix row
function headName() { return head() === "mean" ? "mean over the " + H + " heads" : "head " + head(); }
function show(i) {
  current = i;
  const w = matrix(layer(), head())[i];
  toks.forEach((el, j) => {
    el.classList.toggle("sel", j === i);
    el.classList.toggle("future", j > i);
    if (j <= i) {
      el.dataset.weight = w[j].toFixed(4);
      el.style.background = wash(w[j]);
      labels[j].textContent = w[j] >= 0.995 ? "1" : w[j] >= 0.005 ? w[j].toFixed(2).slice(1) : "";
      el.title = "token " + j + " \u2190 query " + i + ": weight " + w[j].toFixed(4);
    } else {
      delete el.dataset.weight;
      el.style.background = "";
      labels[j].textContent = "";
      el.title = "token " + j + " is in the future of token " + i + ": masked, weight 0";
    }
  });
  readout(i, w);
  paintMatrix(i);
}
function pin(i) { pinned = i; show(i); }
function readout(i, w) {
  const order = w.map((v, j) => j).sort((a, b) => w[b] - w[a]).slice(0, 12);
  const sum = w.reduce((a, b) => a + b, 0);
  const box = $("readout");
  box.textContent = "";
  const h = document.createElement("h3");
  h.append("Token " + i + " ");
  const q = document.createElement("span"); q.className = "q"; fill(q, D.tokens[i]); h.append(q);
  h.append(" (" + (D.prompt_len !== null ? (i < D.prompt_len ? "prompt" : "generated") + ", " : "")
           + "layer " + layer() + ", " + headName() + ") attends to:");
  box.appendChild(h);
  const table = document.createElement("table"); table.className = "top"; table.id = "top-table";
  for (const j of order) {
    const tr = table.insertRow();
    const tk = tr.insertCell(); const s = document.createElement("span"); s.className = "q"; fill(s, D.tokens[j]); tk.appendChild(s);
    tr.insertCell().textContent = "#" + j + (j === i ? " (itself)" : "");
    const b = document.createElement("div"); b.className = "bar"; b.style.width = Math.max(1, 120 * w[j]) + "px";
    tr.insertCell().appendChild(b);
    const n = tr.insertCell(); n.className = "num"; n.textContent = w[j].toFixed(4);
    tr.dataset.key = j;
  }
  box.appendChild(table);
  const p = document.createElement("p"); p.className = "note"; p.id = "row-sum";
  p.textContent = (i + 1 > order.length ? "Top " + order.length + " of " + (i + 1) + " visible keys. " : "")
    + "The " + (i + 1) + " weights sum to " + sum.toFixed(2) + ": a softmax over the keys this token can see."
    + (i + 1 < T ? " The " + (T - 1 - i) + " later tokens are masked." : "");
  box.appendChild(p);
  $("matrix-title").textContent = "Layer " + layer() + ", " + headName() + ": all " + T + " queries";
}

layerSel.addEventListener("change", () => show(pinned));
headSel.addEventListener("change", () => show(pinned));
document.addEventListener("keydown", (ev) => {
  if (ev.target.tagName === "SELECT") return;
  if (ev.key === "ArrowLeft" && pinned > 0) { pin(pinned - 1); ev.preventDefault(); }
  if (ev.key === "ArrowRight" && pinned < T - 1) { pin(pinned + 1); ev.preventDefault(); }
});
show(pinned);
</script>
</body>
</html>
"""
