"""One self-contained HTML page that shows what the model attends to.

    write_attention_page(path, model, tokenizer, tokens) -> Path

One forward pass through the explicit attention path (model.attention_maps) gives every
layer's weights, (1, nh, T, T). They go into the page as JSON next to the tokens' text, and a
little plain JavaScript draws them: click (or hover) a token to see how much it attends to
every earlier token, pick a layer and a head (or the mean over heads), and read the whole
causal matrix as a heatmap (rows = queries, columns = keys). A sliding-window model
(attn_window = W) shows its band: keys W or more tokens back are masked, hatched like the
future. If the run left a metrics log, its loss curve is drawn too, as inline SVG.

The page loads nothing: no scripts, styles or fonts from anywhere (its Content-Security-Policy
forbids it), so it opens from disk and can be mailed around. To stay light enough for any
browser it shows at most the last max_tokens tokens, and fewer still for a very deep/wide
model (MAX_WEIGHTS numbers in all); the page says so when it does.
"""

import html
import json
import math
import re
from importlib.resources import files
from pathlib import Path

import torch

from common.errors import UserError
from common.files import atomic_write
from .loss_plot import loss_svg
from .metrics import read_metrics

MAX_TOKENS = 256          # default cap on the tokens shown
MAX_WEIGHTS = 2_000_000   # cap on the numbers embedded (all layers and heads): a few MB of page
SCALE = 10_000            # weights are stored as integers in units of 1/SCALE, i.e. 4 decimals


class AttentionPageError(UserError, ValueError):
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
        return atomic_write(path, page)  # a crash never leaves a half-written page
    except UserError as e:
        raise AttentionPageError(f"cannot write the attention page: {e}") from None


# -----------------------------------------------------------------------------
# the numbers: one forward pass, weights kept exactly as the model computed them (rounded)

def window_size(n_tokens: int, block_size: int, max_tokens: int, n_maps: int, rolling: bool = False):
    """How many of the last tokens to show, and why not more (None if all are shown).
    n_maps = n_layer * n_head causal matrices of T(T+1)/2 numbers each. A rolling model
    (sliding window + rotary positions) runs on past block_size, so only the page's caps hold."""
    fit = int((math.sqrt(1 + 8 * MAX_WEIGHTS / n_maps) - 1) / 2)   # largest T within MAX_WEIGHTS
    limits = [(max_tokens, f"the page shows at most max_tokens = {max_tokens}"),
              (fit, f"a model with {n_maps} layer x head maps fits {fit} tokens in the page's "
                    f"budget of {MAX_WEIGHTS:,} weights")]
    if not rolling:
        limits.insert(0, (block_size, f"the model sees at most block_size = {block_size} tokens at once"))
    T, why = min(limits, key=lambda lw: lw[0])
    return (n_tokens, None) if n_tokens <= T else (T, why)


@torch.no_grad()
def attention_data(model, tokenizer, tokens, max_tokens: int = MAX_TOKENS, prompt_len=None) -> dict:
    """Everything the page embeds, as JSON-ready values. weights[l][h][i] lists query i's
    weights over keys 0..i (the causal lower triangle), as integers in units of 1/SCALE; with
    attn_window = W the keys W or more back hold 0 (the page hatches them)."""
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
    T, why = window_size(len(tokens), cfg.block_size, max_tokens, cfg.n_layer * cfg.n_head, cfg.rolling)
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
            "attn_window": cfg.attn_window, "scale": SCALE, "weights": weights}


# -----------------------------------------------------------------------------
# the loss curve, from out_dir/metrics.jsonl, as a static SVG

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
    skipped = f'<p class="note">{bad} unreadable line(s) in the log were skipped.</p>' if bad else ""
    last = f"last eval: iter {evals[-1][0]:,}, val loss {evals[-1][2]:.4f}. " if evals else ""
    return (f'<h2>The run\'s loss</h2>\n<p>{last}From {html.escape(path.name)}: {len(train):,} train '
            f'and {len(evals):,} eval records.</p>\n{svg}\n{skipped}')


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
    W = d.get("attn_window", 0)
    if W:
        model += (f" Sliding-window attention, attn_window = {W}: each token sees itself and the "
                  f"{W - 1} before it; keys further back are masked, hatched like the future.")
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
    W = d.get("attn_window", 0)
    masked = (f"masked (a key in the query's future, or {W} or more tokens back: outside its "
              f"window; weight 0)" if W else "masked (a key in the query's future: weight 0)")
    parts = {"TITLE": html.escape(title), "SUMMARY": summary(d), "SCALE": str(d["scale"]),
             "MASKED": html.escape(masked, quote=False),
             "LOSS": f'<section id="loss">{loss_html}</section>' if loss_html else "", "DATA": payload}
    # one pass, so a token that happens to read "__DATA__" is never substituted again
    template = files(__package__).joinpath("attention_page.html").read_text(encoding="utf-8")
    return re.sub(r"__([A-Z]+)__", lambda m: parts[m.group(1)], template)
