"""head-importance: after training, each head silenced in turn (its output multiplied by 0 before
W_O, as Michel et al., 2019, mask heads) and the val loss measured again: how much each head is
worth. And whether the heads of a layer learnt different things: the mean Jensen-Shannon
divergence between the attention maps of every pair of its heads on the same text (bits: 0 the
same map, 1 disjoint), after training and at init.
"""

import statistics

import torch

from model import GPT
from .ablations import lab_attention
from .maps import head_divergence
from .plot import heatmaps
from .report import Result
from .trainer import Arm, Budget, Plan, config, mean, train_arms, val_loss

QUESTION = "Is every head learning something different, and do some heads matter more than others?"
FULL = Plan(Budget(steps=600), seeds=(0, 1, 2),
            model=dict(n_layer=2, n_head=8, n_embd=64, pos_emb="rope"))
QUICK = Plan(Budget(steps=150, block_size=32, learning_rate=1e-2, evals=1, val_batches=4),
             seeds=(0,), model=dict(n_layer=1, n_head=4, n_embd=32, pos_emb="rope"))
PRUNABLE = 0.01  # nats: a head whose removal costs less is "prunable" here


def importance(model, batches) -> list[list[float]]:
    """[layer][head]: the val loss with that head silenced, minus the val loss with none."""
    attns = lab_attention(model)
    base = val_loss(model, batches)
    out = []
    for attn in attns:
        row = []
        for h in range(attn.n_head):
            attn.head_keep = torch.ones(attn.n_head)
            attn.head_keep[h] = 0.0
            row.append(val_loss(model, batches) - base)
        attn.head_keep = None
        out.append(row)
    return out


def run(corpus, plan: Plan) -> Result:
    cfg = config(corpus, plan)
    runs = train_arms(corpus, [Arm("model", lambda: GPT(cfg))], plan)
    batches = corpus.val_batches(plan.budget)
    probe = batches[0][0][:4]                                            # (4, T): the same text for all
    per_seed = {}
    for r in runs:
        torch.manual_seed(r.seed)  # the same seed rebuilds the run's init
        init = [head_divergence(w) for w in GPT(cfg).attention_maps(probe)]
        per_seed[r.seed] = {"val_loss": r.val, "importance": importance(r.model, batches),
                            "divergence_init": init,
                            "divergence_end": [head_divergence(w) for w in r.model.attention_maps(probe)]}
    rows = []
    for layer in range(cfg.n_layer):
        costs = [sorted(s["importance"][layer], reverse=True) for s in per_seed.values()]
        rows.append([f"layer {layer}", mean(c[0] for c in costs), mean(statistics.median(c) for c in costs),
                     mean(c[-1] for c in costs),
                     f"{mean(sum(x < PRUNABLE for x in c) for c in costs):.1f} of {cfg.n_head}",
                     mean(s["divergence_init"][layer] for s in per_seed.values()),
                     mean(s["divergence_end"][layer] for s in per_seed.values())])
    every = [x for s in per_seed.values() for row in s["importance"] for x in row]
    tops = [max(x for row in s["importance"] for x in row) for s in per_seed.values()]
    medians = [statistics.median([x for row in s["importance"] for x in row]) for s in per_seed.values()]
    js_init = mean(x for s in per_seed.values() for x in s["divergence_init"])
    js_end = mean(x for s in per_seed.values() for x in s["divergence_end"])
    ratio = mean(t / m for t, m in zip(tops, medians)) if min(medians) > 0 else float("inf")
    shows = (f"silencing one head raises the val loss by {min(every):+.3f} to {max(every):+.3f} nats; the most "
             f"important head costs {ratio:.1f}x the median head (mean over seeds); "
             f"{sum(x < PRUNABLE for x in every)} of {len(every)} heads cost under {PRUNABLE} nats; "
             f"the heads of a layer {'differ' if js_end > 2 * js_init else 'do not differ much'}: mean "
             f"pairwise JS divergence {js_end:.3f} bits after training, {js_init:.3f} at init")
    panels = [(f"seed {seed} (val loss {s['val_loss']:.3f})", s["importance"],
               [f"layer {i}" for i in range(cfg.n_layer)], [f"h{h}" for h in range(cfg.n_head)])
              for seed, s in per_seed.items()]
    svg = heatmaps(panels, "head-importance: val loss increase when one head is silenced (nats)",
                   note=f"mean pairwise JS divergence between a layer's heads: {js_end:.3f} bits "
                        f"trained, {js_init:.3f} at init")
    return Result(["layer", "top head", "median head", "least head", f"heads < {PRUNABLE}",
                   "JS at init", "JS trained"], rows, shows, {"seeds": per_seed}, svg)
