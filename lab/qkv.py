"""qkv: queries, keys and values from three projections of the input (the model), from one shared
projection (q = k = v = x W), and from none (q = k = v = x, the lesson's worked example).

With one matrix a token's query is its own key, so its score with itself, q_i . q_i = |q_i|^2,
is never negative, and what a token offers (k) cannot differ from what it looks for (q) or what
it passes on (v). Without any, the scores are fixed similarities of the
inputs; only W_O and the rest of the block learn. "weight on itself" is the mean attention a
token gives its own position, over layers, heads and queries (past the first, which has no other).
"""

from model import GPT
from .ablations import PROJECTIONS, set_projections
from .plot import curves
from .report import Result, pm, versus
from .trainer import Arm, Budget, Plan, by_arm, config, mean, mean_curve, train_arms

QUESTION = "Why three projections for Q, K and V, rather than one shared, or none (Q = K = V = X)?"
FULL = Plan(Budget(steps=400), seeds=(0, 1, 2),
            model=dict(n_layer=2, n_head=4, n_embd=64, pos_emb="rope"))
QUICK = Plan(Budget(steps=150, block_size=32, learning_rate=1e-2, evals=3, val_batches=4),
             seeds=(0,), model=dict(n_layer=1, n_head=2, n_embd=32, pos_emb="rope"))


def run(corpus, plan: Plan) -> Result:
    cfg = config(corpus, plan)

    def arm(how):
        return Arm(how, lambda: set_projections(GPT(cfg), how))

    arms = [arm(how) for how in PROJECTIONS]
    runs = by_arm(train_arms(corpus, arms, plan))
    fig, rows = {}, []
    probe = corpus.val_batches(plan.budget)[0][0][:4]   # (4, T): the same text for all
    for how, rs in runs.items():
        self_weight = [mean(w.diagonal(dim1=-2, dim2=-1)[..., 1:].mean().item()
                            for w in r.model.attention_maps(probe)) for r in rs]
        fig[how] = {"val_loss": [r.val for r in rs], "params": rs[0].model.num_params(),
                    "qkv_params": qkv_params(rs[0].model), "weight_on_itself": self_weight,
                    "curve": mean_curve(rs)}
        rows.append([how, pm(fig[how]["val_loss"]), mean(self_weight), fig[how]["params"],
                     fig[how]["qkv_params"]])
    order = sorted(PROJECTIONS, key=lambda h: mean(fig[h]["val_loss"]))
    loss = {h: fig[h]["val_loss"] for h in PROJECTIONS}
    shows = (f"by val loss, best first: {', '.join(order)}; against three projections "
             f"({mean(loss['three']):.3f}): {versus(loss, 'three')}; a token's weight on itself: "
             + ", ".join(f"{h} {mean(fig[h]['weight_on_itself']):.2f}" for h in PROJECTIONS))
    svg = curves({h: fig[h]["curve"] for h in PROJECTIONS}, "step", "val loss",
                 "qkv: three projections, one shared, none", skip_init=True)
    return Result(["projections", "val loss", "weight on itself", "parameters", "of them Q, K, V"],
                  rows, shows, fig, svg)


def qkv_params(model) -> int:
    """The parameters of the blocks' Q, K and V projections, a shared one counted once."""
    sizes = {id(p): p.numel() for b in model.blocks for m in (b.attn.q_proj, b.attn.k_proj, b.attn.v_proj)
             for p in m.parameters()}
    return sum(sizes.values())
