"""Where a training step's time goes, option by option: why a speedrun step costs more than a
baseline step of the same model size.

    OMP_NUM_THREADS=2 python bench/step_breakdown.py                     # speedrun_cpu vs cpu_tinyshakespeare
    python bench/step_breakdown.py --config=speedrun_cpu --baseline=cpu_tinyshakespeare --steps=40

Builds the config's model and optimizers (random data of its batch shape, no files), then times
one training step as train.py runs it (forward, backward, clip, optimizer steps, zero_grad),
split into those phases, eagerly (no torch.compile). Then the same with each speedrun option
switched back to the baseline's choice, one at a time, and the baseline itself. The variants run
in turn, step by step (round robin), so a slow spell of a shared machine hits them all alike;
the table shows medians. Prints a table and writes JSON; asserts nothing.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import build, load_config_file  # noqa: E402
from model import GPT  # noqa: E402
from training.config import TrainConfig, model_config  # noqa: E402
from training.optim import make_optimizers  # noqa: E402

# each speedrun option and the baseline's choice it is switched back to
OPTIONS = {"optimizer": "adamw", "pos_emb": "learned", "norm": "layernorm", "embed_norm": False,
           "qk_norm": False, "mlp_act": "gelu", "zero_init": False, "tie_embeddings": True,
           "logit_softcap": 0.0, "x0_shortcut": False}
PHASES = ("forward", "backward", "clip", "optimizer", "zero_grad")


class Variant:
    def __init__(self, name, cfg, vocab=65, seed=0):
        torch.manual_seed(seed)
        self.name, self.cfg = name, cfg
        self.model = GPT(model_config(cfg, vocab))
        self.optimizers = make_optimizers(self.model, cfg, torch.device("cpu"))
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, vocab, (cfg.batch_size, cfg.block_size), generator=g)
        self.y = torch.randint(0, vocab, (cfg.batch_size, cfg.block_size), generator=g)
        self.times = {p: [] for p in PHASES}

    def step(self):
        t = [time.perf_counter()]
        _, loss = self.model(self.x, self.y)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        t.append(time.perf_counter())
        for opt in self.optimizers:
            opt.step()
        t.append(time.perf_counter())
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        for p, a, b in zip(PHASES, t, t[1:]):
            self.times[p].append(b - a)

    def medians(self) -> dict:
        out = {p: 1000 * statistics.median(v) for p, v in self.times.items()}
        out["total"] = 1000 * statistics.median([sum(s) for s in zip(*self.times.values())])
        return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="speedrun_cpu")
    p.add_argument("--baseline", default="cpu_tinyshakespeare")
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant (after 3 warm-up steps)")
    p.add_argument("--out", default="bench/results/step_breakdown.json")
    args = p.parse_args()
    full = build(TrainConfig, load_config_file(TrainConfig, args.config))
    base = build(TrainConfig, load_config_file(TrainConfig, args.baseline))
    variants = [Variant(args.config, full)]
    for key, value in OPTIONS.items():
        if getattr(full, key) != value:
            variants.append(Variant(f"  {key}={value}", build(TrainConfig, {**vars(full), key: value})))
    variants.append(Variant(args.baseline, base))
    for v in variants:  # warm-up: allocator, first-touch, lazy init
        for _ in range(3):
            v.step()
    for _ in range(args.steps):
        for v in variants:
            v.step()

    threads = torch.get_num_threads()
    print(f"eager training step, median of {args.steps} (round robin), torch {torch.__version__}, "
          f"{threads} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    print(f"{'variant':<28} {'tokens':>6} " + " ".join(f"{p:>9}" for p in PHASES) + f" {'total ms':>9} {'vs full':>8}")
    rows, ref = [], variants[0].medians()["total"]
    for v in variants:
        m = v.medians()
        tokens = v.cfg.batch_size * v.cfg.block_size
        print(f"{v.name:<28} {tokens:>6} " + " ".join(f"{m[p]:9.1f}" for p in PHASES)
              + f" {m['total']:9.1f} {m['total'] - ref:+8.1f}")
        rows.append({"variant": v.name.strip(), "tokens": tokens, **m})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": threads, "steps": args.steps, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
