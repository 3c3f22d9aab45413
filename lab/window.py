"""window: sliding-window attention at a fixed block size, attn_window from the whole block down to
1 (each token sees only itself), the model's own option. A decoding cache then holds W slots per
layer instead of block_size; a token still depends on up to n_layer * (W - 1) tokens back
through the layers (docs/walkthrough.md, step 14). Every arm is scored on the same val windows
of block_size tokens, every position's prediction counted, and on the last quarter of the
positions alone, where full attention has the most context to use.
"""

from functools import partial

import torch
import torch.nn.functional as F

from model import GPT, eval_mode
from .plot import curves
from .report import Result, pm, versus
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


@torch.no_grad()
def late_loss(model, batches, start: int) -> float:
    """The val loss of the predictions at positions start.. only: those with the most context."""
    with eval_mode(model):
        losses = [F.cross_entropy(model(x)[0][:, start:].flatten(0, 1), y[:, start:].flatten()).item()
                  for x, y in batches]
    return sum(losses) / len(losses)


def run(corpus, plan: Plan) -> Result:
    T = plan.budget.block_size
    late = 3 * T // 4
    cfgs = [config(corpus, plan, attn_window=w) for w in windows(T)]
    names = [f"window {c.attn_window or T}" + (" (full)" if c.attn_window == 0 else "") for c in cfgs]
    runs = by_arm(train_arms(corpus, [Arm(n, partial(GPT, c)) for n, c in zip(names, cfgs)], plan))
    batches = corpus.val_batches(plan.budget)   # the val loss's own batches
    fig, rows = {}, []
    for n in names:
        rs = runs[n]
        c = rs[0].model.config  # read off the model trained, not the arm's name
        w = c.attn_window or T
        f = fig[n] = {"attn_window": w, "reach": min(T - 1, c.n_layer * (w - 1)), "val_loss": [r.val for r in rs],
                      "val_loss_late": [late_loss(r.model, batches, late) for r in rs], "curve": mean_curve(rs)}
        rows.append([n, f["reach"], pm(f["val_loss"]), pm(f["val_loss_late"])])
    full = names[0]
    loss = {n: fig[n]["val_loss"] for n in names}
    best = min(names, key=lambda n: mean(loss[n]))
    fine = [fig[n]["attn_window"] for n in names if mean(loss[n]) < mean(loss[full]) + 0.01]
    shows = (f"against the full block of {T} ({mean(loss[full]):.3f}): {versus(loss, full)}; the best is "
             f"{best} ({mean(loss[best]):.3f}); the smallest window within 0.01 nats of full attention or "
             f"better: {min(fine)}; at positions {late}+ (the most context) full attention scores "
             f"{mean(fig[full]['val_loss_late']):.3f}, {best} {mean(fig[best]['val_loss_late']):.3f}")
    svg = curves({"val loss, every position (mean over seeds)":
                  [(fig[n]["attn_window"], mean(fig[n]["val_loss"])) for n in names],
                  f"val loss, positions {late}+": [(fig[n]["attn_window"], mean(fig[n]["val_loss_late"])) for n in names]},
                 "attn_window (tokens each query sees)", "val loss",
                 f"window: val loss against attn_window, block_size {T}")
    return Result(["attn_window", "reach (tokens back)", "val loss", f"val loss, positions {late}+"],
                  rows, shows, fig, svg)
