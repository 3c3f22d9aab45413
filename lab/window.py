"""window: sliding-window attention at a fixed block size, attn_window from the whole block down to
1 (each token sees only itself), the model's own option. A decoding cache then holds W slots per
layer instead of block_size; a token still depends on up to n_layer * (W - 1) tokens back
through the layers (docs/walkthrough.md, step 14). Every arm is scored on the same val windows
of block_size tokens, every position's prediction counted.
"""

from functools import partial

from model import GPT
from .plot import curves
from .report import Result, agreement, paired, pm
from .trainer import Arm, Budget, Plan, by_arm, config, mean, mean_curve, train_arms

QUESTION = "Sliding-window attention caps the KV cache: what does a smaller window cost?"
FULL = Plan(Budget(steps=300), seeds=(0, 1, 2),
            model=dict(n_layer=2, n_head=4, n_embd=64, pos_emb="rope"))
QUICK = Plan(Budget(steps=100, block_size=32, learning_rate=1e-2, evals=2, val_batches=4),
             seeds=(0,), model=dict(n_layer=1, n_head=2, n_embd=32, pos_emb="rope"))


def windows(block_size: int) -> list[int]:
    """The whole block (attn_window 0), then a quarter of it, halving down to 1."""
    out, w = [0], block_size // 4
    while w >= 1:
        out.append(w)
        w //= 2
    return out


def run(corpus, plan: Plan) -> Result:
    T = plan.budget.block_size
    cfgs = [config(corpus, plan, attn_window=w) for w in windows(T)]
    names = [f"window {c.attn_window or T}" + (" (full)" if c.attn_window == 0 else "") for c in cfgs]
    runs = by_arm(train_arms(corpus, [Arm(n, partial(GPT, c)) for n, c in zip(names, cfgs)], plan))
    fig, rows = {}, []
    for n in names:
        rs = runs[n]
        c = rs[0].model.config  # read off the model trained, not the arm's name
        w = c.attn_window or T
        fig[n] = {"attn_window": w, "reach": min(T - 1, c.n_layer * (w - 1)), "val_loss": [r.val for r in rs],
                  "curve": mean_curve(rs)}
        rows.append([n, fig[n]["reach"], pm(fig[n]["val_loss"])])
    full = fig[names[0]]["val_loss"]
    words = []
    for n in names[1:]:
        d = paired(fig[n]["val_loss"], full)
        words.append(f"{fig[n]['attn_window']}: {d['mean']:+.3f}" + ("" if d["seeds_agree"] else " (noise)"))
    close = [fig[n]["attn_window"] for n in names[1:]
             if paired(fig[n]["val_loss"], full)["mean"] < 0.01]
    shows = (f"against the full block of {T} ({mean(full):.3f}), by window: " + ", ".join(words)
             + ("; " + agreement(paired(fig[names[-1]]["val_loss"], full)) + " on the smallest")
             + (f"; the smallest window within 0.01 nats of full attention: {min(close)}" if close
                else "; every smaller window costs more than 0.01 nats"))
    svg = curves({"val loss at the end (mean over seeds)": [(fig[n]["attn_window"], mean(fig[n]["val_loss"])) for n in names]},
                 "attn_window (tokens each query sees)", "val loss",
                 f"window: val loss against attn_window, block_size {T}")
    return Result(["attn_window", "reach (tokens back)", "val loss"], rows, shows, fig, svg)
