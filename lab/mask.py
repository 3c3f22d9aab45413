"""mask: the causal mask left out in training. Every position then sees the token it is asked to
predict (it is the next one in the same row), so the training loss it reports falls far below
what the model can really do; the real loss is the one it meets when it writes text, one token
after another with only the past to go on: the val loss with the mask (what sample.py's KV-cache
decoding computes, as the cache holds only the past).
"""

import textwrap

import torch

from model import GPT
from .ablations import lab_attention
from .plot import curves
from .report import Result, agreement, paired, pm
from .trainer import (Arm, Budget, Plan, by_arm, config, mean, mean_curve, train_arms, train_curve,
                      val_loss)

QUESTION = "Forget the causal mask: does training look fine while generation is garbage?"
FULL = Plan(Budget(steps=400), seeds=(0, 1, 2),
            model=dict(n_layer=2, n_head=4, n_embd=64, pos_emb="rope"))
QUICK = Plan(Budget(steps=150, block_size=32, learning_rate=1e-2, evals=3, val_batches=4),
             seeds=(0,), model=dict(n_layer=1, n_head=2, n_embd=32, pos_emb="rope"))
PROMPT = "DUKE ORSINO:\n"
SAMPLE_TOKENS = 160


def see_future(model, on: bool):
    for block in model.blocks:
        block.attn.see_future = on


def causal_val(model, batches) -> float:
    """The val loss with the mask put back: each prediction from the past alone."""
    see_future(model, False)
    try:
        return val_loss(model, batches)
    finally:
        see_future(model, True)


def run(corpus, plan: Plan) -> Result:
    def causal():
        return GPT(config(corpus, plan))

    def unmasked():
        m = causal()
        lab_attention(m)
        see_future(m, True)
        return m

    arms = [Arm("causal", causal), Arm("no mask", unmasked, evaluate=causal_val)]
    runs = by_arm(train_arms(corpus, arms, plan))
    batches = corpus.val_batches(plan.budget)
    tail = max(1, plan.budget.steps // 10)  # "the training loss it reports": the last 10% of steps
    fig, rows = {}, []
    for name, rs in runs.items():
        train = [mean(r.train_loss[-tail:]) for r in rs]
        as_trained = [val_loss(r.model, batches) for r in rs]  # no mask for "no mask": as it trained
        real = [r.val for r in rs]                              # with the mask (causal_val for it)
        fig[name] = {"train_loss": train, "val_loss_as_trained": as_trained, "val_loss_causal": real,
                     "curve_causal_val": mean_curve(rs)}
        rows.append([name, pm(train), pm(as_trained), pm(real)])
    prompt = torch.tensor([corpus.tokenizer.encode(PROMPT)])
    samples = {}
    for name, rs in runs.items():  # seed 0's model, the same sampling seed for both
        out = rs[0].model.generate(prompt, SAMPLE_TOKENS, temperature=0.8, seed=0)
        samples[name] = corpus.tokenizer.decode(out[0].tolist())
    fig["samples"] = samples
    nm, c = fig["no mask"], fig["causal"]
    gap = paired(nm["val_loss_causal"], nm["train_loss"])
    vs = paired(nm["val_loss_causal"], c["val_loss_causal"])
    lower = mean(c["train_loss"]) - mean(nm["train_loss"])
    shows = (f"without the mask the training loss reads {mean(nm['train_loss']):.2f}, "
             f"{abs(lower):.2f} {'below' if lower > 0 else 'above'} the causal model's "
             f"{mean(c['train_loss']):.2f}; "
             f"its real (causal) val loss is {mean(nm['val_loss_causal']):.2f}, {gap['mean']:+.2f} against "
             f"its own training loss and {vs['mean']:+.2f} against the causal model's "
             f"{mean(c['val_loss_causal']):.2f} ({agreement(vs)})")
    lines = {}
    for name, rs in runs.items():
        lines[f"{name}: train loss (reported)"] = train_curve(rs)
        lines[f"{name}: causal val loss"] = fig[name]["curve_causal_val"]
    svg = curves(lines, "step", "loss", "mask: the training loss reported, and the real (causal) val loss")
    return Result(["arm", "train loss (reported)", "val loss (as trained)", "val loss (causal, real)"],
                  rows, shows, fig, svg, notes=side_by_side(samples))


def side_by_side(samples: dict, width: int = 38) -> str:
    """Each model's sample in its own column (newlines shown as a pilcrow, wrapped)."""
    cols = [[f"{name} (seed 0):"] + textwrap.wrap(text.replace("\n", "¶ "), width)
            for name, text in samples.items()]
    n = max(len(c) for c in cols)
    return "\n".join("   ".join(c[i].ljust(width) if i < len(c) else " " * width for c in cols).rstrip()
                     for i in range(n))
