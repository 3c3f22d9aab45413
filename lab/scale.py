"""scale: softmax(q k^T * s) with the model's s = 1/sqrt(head_size), with no scaling (s = 1), and
with the width instead of the head size (s = 1/sqrt(n_embd), smaller by sqrt(n_head)).

The attention entropy (nats, the mean over layers, heads and queries of -sum w ln w) says how
one-hot the softmax is: ln(k) for a query weighting its k visible keys evenly, 0 for one key.
"""

import math

import torch

from model import GPT
from .ablations import lab_attention
from .maps import entropy, uniform_entropy
from .plot import curves
from .report import Result, pm, versus
from .trainer import Arm, Budget, Plan, by_arm, config, mean, mean_curve, train_arms

QUESTION = "Why divide Q K^T by sqrt(head size)? What if you skip it, or divide by sqrt(n_embd)?"
FULL = Plan(Budget(steps=300), seeds=(0, 1, 2),
            model=dict(n_layer=1, n_head=4, n_embd=128, pos_emb="rope"))
QUICK = Plan(Budget(steps=100, block_size=32, evals=2, val_batches=4), seeds=(0,),
             model=dict(n_layer=1, n_head=2, n_embd=64, pos_emb="rope"))
OWN = "1/sqrt(head_size)"  # the model's own


def scalings(cfg) -> dict:
    return {OWN: None, "none": 1.0, "1/sqrt(n_embd)": 1 / math.sqrt(cfg.n_embd)}


def run(corpus, plan: Plan) -> Result:
    cfg = config(corpus, plan)

    def arm(name, scale):
        def build():
            m = GPT(cfg)
            if scale is not None:
                for a in lab_attention(m):
                    a.scale = scale
            return m
        return Arm(name, build)

    arms = [arm(name, s) for name, s in scalings(cfg).items()]
    runs = by_arm(train_arms(corpus, arms, plan))
    probe = corpus.val_batches(plan.budget)[0][0][:4]   # (4, T): the same text for all
    fig, rows = {}, []
    for a in arms:
        rs = runs[a.name]
        at_init = []
        for r in rs:  # the init again: the same seed builds the same weights
            torch.manual_seed(r.seed)
            at_init.append(entropy(a.build().attention_maps(probe)))
        at_end = [entropy(r.model.attention_maps(probe)) for r in rs]
        fig[a.name] = {"val_loss": [r.val for r in rs],
                       "entropy_init": at_init, "entropy_end": at_end, "curve": mean_curve(rs)}
        rows.append([a.name, pm(fig[a.name]["val_loss"]), mean(at_init), mean(at_end)])
    U = fig["uniform_entropy"] = uniform_entropy(probe.size(1))
    names = list(scalings(cfg))
    best = min(names, key=lambda n: mean(fig[n]["val_loss"]))
    init = {n: mean(fig[n]["entropy_init"]) for n in names}
    end = {n: mean(fig[n]["entropy_end"]) for n in names}
    sharp = min(names, key=init.get)
    if init[sharp] > 0.9 * U:
        at_init = (f"at init every softmax is near uniform ({min(init.values()):.2f} to "
                   f"{max(init.values()):.2f} nats, uniform {U:.2f})")
    else:
        at_init = f"at init {sharp} is already sharp ({init[sharp]:.2f} nats, uniform {U:.2f})"
    sharp = min(names, key=end.get)
    shows = (f"{best} has the lowest val loss ({mean(fig[best]['val_loss']):.3f}); against {OWN}: "
             f"{versus({n: fig[n]['val_loss'] for n in names}, OWN)}; {at_init}; after training {sharp} "
             f"is the most one-hot ({end[sharp]:.2f} nats; {OWN} {end[OWN]:.2f})")
    lines = {f"{n} (entropy {init[n]:.2f} -> {end[n]:.2f} nats)": fig[n]["curve"] for n in names}
    svg = curves(lines, "step", "val loss", f"scale: val loss, head_size {cfg.head_size}, n_embd {cfg.n_embd}",
                 skip_init=True)
    return Result(["scale", "val loss", "entropy at init", "entropy at end"], rows, shows, fig, svg)
