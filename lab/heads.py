"""heads: the same width cut into 1, 2, 4, 8 and 16 heads (every count that divides n_embd and
leaves a head at least 2 channels, as RoPE turns channel pairs). The parameters are the same in
every arm: only how the channels are grouped into softmaxes changes. More heads give a token
more places to look at once, each through a narrower query and key.

The arms are interleaved step by step (one step of each in turn), so a busy machine slows them
alike; the time per step is the median over a run's steps.
"""

from model import GPT
from .plot import curves
from .report import Result, agreement, paired, pm
from .trainer import Arm, Budget, Plan, by_arm, config, mean, mean_curve, train_arms

QUESTION = "One wide head or many narrow ones at the same width: what is lost or gained, in loss and time?"
FULL = Plan(Budget(steps=300), seeds=(0, 1, 2),
            model=dict(n_layer=2, n_embd=64, pos_emb="rope"))
QUICK = Plan(Budget(steps=100, block_size=32, learning_rate=1e-2, evals=2, val_batches=4),
             seeds=(0,), model=dict(n_layer=1, n_embd=32, pos_emb="rope"))
COUNTS = (1, 2, 4, 8, 16)


def run(corpus, plan: Plan) -> Result:
    C = plan.model["n_embd"]
    counts = [h for h in COUNTS if C % h == 0 and C // h >= 2]

    def arm(h):
        return Arm(f"{h} head{'s' * (h > 1)}", lambda: GPT(config(corpus, plan, n_head=h)))

    arms = [arm(h) for h in counts]
    runs = by_arm(train_arms(corpus, arms, plan))
    fig, rows = {}, []
    for a in arms:
        rs = runs[a.name]
        h = rs[0].model.config.n_head  # read off the model trained, not the arm's name
        fig[a.name] = {"n_head": h, "head_size": rs[0].model.config.head_size, "val_loss": [r.val for r in rs],
                       "ms_per_step": [r.ms_per_step for r in rs], "params": rs[0].model.num_params(),
                       "curve": mean_curve(rs)}
        f = fig[a.name]
        rows.append([a.name, f["head_size"], pm(f["val_loss"]), mean(f["ms_per_step"]), f["params"]])
    names = [a.name for a in arms]
    best = min(names, key=lambda n: mean(fig[n]["val_loss"]))
    one = fig[names[0]]["val_loss"]
    d = paired(fig[best]["val_loss"], one) if best != names[0] else None
    fast = min(names, key=lambda n: mean(fig[n]["ms_per_step"]))
    slow = max(names, key=lambda n: mean(fig[n]["ms_per_step"]))
    versus = f", {d['mean']:+.3f} against 1 head ({agreement(d)})" if d else ""
    shows = (f"{best} has the lowest val loss ({mean(fig[best]['val_loss']):.3f}{versus}); "
             f"the worst is {max(names, key=lambda n: mean(fig[n]['val_loss']))} "
             f"({max(mean(fig[n]['val_loss']) for n in names):.3f}); a step takes "
             f"{mean(fig[fast]['ms_per_step']):.1f} ms with {fast} and "
             f"{mean(fig[slow]['ms_per_step']):.1f} ms with {slow} "
             f"({mean(fig[slow]['ms_per_step']) / mean(fig[fast]['ms_per_step']):.2f}x), "
             + ("at equal parameters" if len({fig[n]["params"] for n in names}) == 1 else "parameters differ"))
    svg = curves({n: fig[n]["curve"] for n in names}, "step", "val loss",
                 f"heads: n_embd {C} cut into 1 to {counts[-1]} heads", skip_init=True)
    return Result(["heads", "head size", "val loss", "ms / step", "parameters"], rows, shows, fig, svg)
