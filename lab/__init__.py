"""The lesson's questions about attention, each answered by a small controlled experiment that
anyone can run on a CPU in about a minute: `python -m lab` lists them, `python -m lab NAME` runs
one (docs/lab.md: what each measured, and what it shows).

    trainer.py      the one training loop: arms side by side, equal budgets, fixed seeds
    ablations.py    the versions of attention nobody trains with, made from outside model/
    report.py       a result's table, words and figures;  plot.py  its SVG
    scale.py, mask.py, qkv.py, heads.py, head_importance.py, kv_heads.py, window.py: one
    experiment each, with its QUESTION, a FULL and a QUICK plan, and run(corpus, plan) -> Result
"""

from . import head_importance, heads, kv_heads, mask, qkv, scale, window

# in the order of the lesson's questions
EXPERIMENTS = {"scale": scale, "mask": mask, "qkv": qkv, "heads": heads,
               "head-importance": head_importance, "kv-heads": kv_heads, "window": window}
