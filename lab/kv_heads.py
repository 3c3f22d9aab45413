"""kv-heads: 8 query heads with 8 key/value heads (MHA), fewer shared by groups of query heads
(GQA) or one shared by all (MQA): the model's own n_kv_head. The KV cache keeps each layer's
keys and values, 2 * n_kv_head * head_size numbers per token per layer, so it shrinks by
n_head / n_kv_head; K and V's parameters shrink with it, Q, W_O and the MLP do not. Each query
head keeps its own queries, so heads that share keys can still look at different tokens: "JS
between heads" is the mean Jensen-Shannon divergence between the heads' attention maps (maps.py).
"""

from functools import partial

from model import GPT
from .plot import curves
from .maps import head_divergence
from .report import Result, pm, versus
from .trainer import Arm, Budget, Plan, by_arm, config, mean, mean_curve, train_arms

QUESTION = "MQA cuts the KV cache by the number of heads: why does quality fall by less? GQA in between?"
FULL = Plan(Budget(steps=300), seeds=(0, 1, 2),
            model=dict(n_layer=2, n_head=8, n_embd=64, pos_emb="rope"))
QUICK = Plan(Budget(steps=100, block_size=32, learning_rate=1e-2, evals=2, val_batches=4),
             seeds=(0,), model=dict(n_layer=1, n_head=4, n_embd=32, pos_emb="rope"))


def cache_bytes_per_token(cfg, dtype_bytes: int = 4) -> int:
    """K and V of one token in every layer, in float32 (what a CPU decodes in)."""
    return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_size * dtype_bytes


def label(cfg) -> str:
    kind = "MHA" if cfg.n_kv_head == cfg.n_head else "MQA" if cfg.n_kv_head == 1 else "GQA"
    return f"{kind}, {cfg.n_kv_head} kv head{'s' * (cfg.n_kv_head > 1)}"


def run(corpus, plan: Plan) -> Result:
    nh = plan.model["n_head"]
    cfgs = [config(corpus, plan, n_kv_head=kv) for kv in range(nh, 0, -1) if nh % kv == 0]
    arms = [Arm(label(c), partial(GPT, c)) for c in cfgs]
    runs = by_arm(train_arms(corpus, arms, plan))
    probe = corpus.val_batches(plan.budget)[0][0][:4]   # (4, T): the same text for all
    fig, rows = {}, []
    for a in arms:
        rs = runs[a.name]
        c = rs[0].model.config  # read off the model trained, not the arm's name
        js = [mean(head_divergence(w) for w in r.model.attention_maps(probe)) for r in rs]
        f = fig[a.name] = {"n_kv_head": c.n_kv_head, "cache_bytes_per_token": cache_bytes_per_token(c),
                           "params": rs[0].model.num_params(), "val_loss": [r.val for r in rs],
                           "head_divergence": js, "curve": mean_curve(rs)}
        rows.append([a.name, f["cache_bytes_per_token"], f["params"], pm(f["val_loss"]), mean(js)])
    mha, mqa = fig[arms[0].name], fig[arms[-1].name]
    js_mha, js_mqa = mean(mha["head_divergence"]), mean(mqa["head_divergence"])
    shows = (f"against MHA ({mean(mha['val_loss']):.3f} at {mha['cache_bytes_per_token']} bytes per token): "
             f"{versus({a.name: fig[a.name]['val_loss'] for a in arms}, arms[0].name)}; MQA's cache is "
             f"{mha['cache_bytes_per_token'] // mqa['cache_bytes_per_token']}x smaller and its val loss "
             f"{100 * (mean(mqa['val_loss']) / mean(mha['val_loss']) - 1):+.1f}%; its query heads, sharing "
             f"one key/value head, attend {'differently' if js_mqa > 0.5 * js_mha else 'more alike'} "
             f"(JS between heads {js_mqa:.2f} bits, MHA {js_mha:.2f})")
    points = [(fig[a.name]["cache_bytes_per_token"], mean(fig[a.name]["val_loss"])) for a in arms]
    kv = " / ".join(str(c.n_kv_head) for c in cfgs)
    svg = curves({"val loss at the end (mean over seeds)": points}, "KV-cache bytes per token (float32, all "
                 "layers)", "val loss", f"kv-heads: {nh} query heads, {kv} key/value heads")
    return Result(["attention", "KV cache bytes / token", "parameters", "val loss", "JS between heads"],
                  rows, shows, fig, svg)
