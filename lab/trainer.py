"""The one training loop every experiment shares: its arms trained side by side, on equal terms.

    Corpus      the built-in corpus (Shakespeare's plays, char-level, offline), prepared once
    Budget      steps, batch, block, learning-rate schedule and eval points: the same for every arm
    Plan        a budget, the seeds and the model settings every arm shares (each experiment has
                a FULL plan and a QUICK one)
    Arm         a name and how to build its model (a GPT, maybe with an ablation from ablations.py)
    train_arms  for each seed: every arm built under that seed, then one step of each arm in turn
                on the same batch (round robin: a busy machine slows every arm alike, and every
                arm sees the same data in the same order), the val loss at the eval points
    val_loss    the mean loss over one fixed set of val batches, the same for every arm and seed

The optimizer and schedule are train.py's own (training/optim.py): AdamW, warmup, cosine decay.
"""

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from data import BatchLoader, load_meta, prepare, read_split, tokenizer_from_dict
from model import GPT, GPTConfig, eval_mode
from training.config import TrainConfig
from training.optim import make_optimizers, set_schedule
from training.state import stream_seed

DATASET = "shakespeare"


class Corpus:
    def __init__(self):
        self.dir = prepare(DATASET, "char", quiet=True)  # at once when already prepared
        meta = load_meta(self.dir)
        self.vocab_size = meta["vocab_size"]
        self.tokenizer = tokenizer_from_dict(meta["tokenizer"])
        self.splits = {}  # split -> its tokens, read once: every loader gathers its batches from them

    def loader(self, split: str, budget: "Budget", seed: int) -> BatchLoader:
        if split not in self.splits:
            self.splits[split] = read_split(self.dir / f"{split}.bin")
        return BatchLoader(self.dir / f"{split}.bin", budget.block_size, budget.batch_size,
                           seed=stream_seed(seed, f"lab-{split}"), tokens=self.splits[split])

    def val_batches(self, budget: "Budget") -> list:
        """[(x, y)]: the budget's fixed val batches, the same for every arm, seed and experiment."""
        val = self.loader("val", budget, seed=0)
        return [val.next_batch() for _ in range(budget.val_batches)]


@dataclass
class Budget:
    steps: int                  # optimizer steps, for every arm
    batch_size: int = 16
    block_size: int = 64
    learning_rate: float = 3e-3
    warmup: int = 20
    evals: int = 8              # val-loss measurements after step 0, evenly spaced
    val_batches: int = 8        # the fixed val batches every val loss is the mean over

    def schedule(self) -> TrainConfig:
        """train.py's settings for this budget: its lr_scale() reads warmup and decay from them."""
        return TrainConfig(batch_size=self.batch_size, block_size=self.block_size, dropout=0.0,
                           learning_rate=self.learning_rate, min_lr=self.learning_rate / 10,
                           max_iters=self.steps, warmup_iters=self.warmup, device="cpu")

    def eval_steps(self) -> list[int]:
        return sorted({round(self.steps * k / self.evals) for k in range(self.evals + 1)})

    def describe(self) -> str:
        c = self.schedule()
        return (f"{self.steps} steps x batch {self.batch_size} x block {self.block_size}, AdamW lr "
                f"{c.learning_rate:g} (warmup {c.warmup_iters}, cosine to {c.min_lr:g}; weight decay "
                f"{c.weight_decay:g}, clip {c.grad_clip:g}), val loss on {self.val_batches} fixed batches")


@dataclass
class Plan:
    budget: Budget
    seeds: tuple
    model: dict                 # GPTConfig settings every arm shares (an arm may change one)


@dataclass
class Arm:
    name: str
    build: Callable[[], GPT]                            # called right after torch.manual_seed(seed)
    evaluate: Callable | None = None                    # (model, batches) -> loss; None: val_loss


@dataclass
class Run:
    arm: str
    seed: int
    model: GPT
    curve: list = field(default_factory=list)          # [(step, val loss)]
    train_loss: list = field(default_factory=list)     # the loss of every step, as training saw it
    step_ms: list = field(default_factory=list)        # the wall time of every step

    @property
    def val(self) -> float:
        return self.curve[-1][1]

    @property
    def ms_per_step(self) -> float:
        return statistics.median(self.step_ms[min(5, len(self.step_ms) - 1):])  # past the first steps


def config(corpus: Corpus, plan: Plan, **kw) -> GPTConfig:
    """The plan's model for the corpus's vocabulary and the budget's block size; kw overrides."""
    return GPTConfig(vocab_size=corpus.vocab_size, block_size=plan.budget.block_size, **{**plan.model, **kw})


@torch.no_grad()
def val_loss(model, batches) -> float:
    with eval_mode(model):
        return sum(model(x, y)[1].item() for x, y in batches) / len(batches)


def train_arms(corpus: Corpus, arms: list[Arm], plan: Plan) -> list[Run]:
    """Train every arm for the plan's steps under each of its seeds, round robin; returns one Run
    per (seed, arm), seed by seed. The same seed gives every arm the same init where its shapes allow
    (each is built right after torch.manual_seed(seed)) and the same batches."""
    budget = plan.budget
    cfg = budget.schedule()
    val_batches = corpus.val_batches(budget)
    evals = set(budget.eval_steps())
    runs = []
    for seed in plan.seeds:
        group = []
        for arm in arms:
            torch.manual_seed(seed)
            model = arm.build()
            opts = make_optimizers(model, cfg, torch.device("cpu"))
            group.append((arm, Run(arm.name, seed, model), opts))
        train = corpus.loader("train", budget, seed)
        for step in range(budget.steps + 1):
            if step in evals:
                for arm, run, _ in group:
                    run.curve.append((step, (arm.evaluate or val_loss)(run.model, val_batches)))
            if step == budget.steps:
                break
            x, y = train.next_batch()
            for _, run, opts in group:  # one step of each arm in turn, on the same batch
                t = time.perf_counter()
                set_schedule(opts, step, cfg)
                _, loss = run.model(x, y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
                for opt in opts:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                run.train_loss.append(loss.item())
                run.step_ms.append(1000 * (time.perf_counter() - t))
        print(f"  seed {seed}: " + ", ".join(f"{r.arm} {r.val:.3f}" for _, r, _ in group), file=sys.stderr)
        runs += [run for _, run, _ in group]
    return runs


def by_arm(runs: list[Run]) -> dict[str, list[Run]]:
    out = {}
    for r in runs:
        out.setdefault(r.arm, []).append(r)
    return out


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def mean_curve(runs: list[Run]) -> list:
    """[(step, the mean val loss over the runs at that step)]"""
    return [(step, mean(r.curve[k][1] for r in runs)) for k, (step, _) in enumerate(runs[0].curve)]


def train_curve(runs: list[Run], points: int = 40) -> list:
    """[(step, the training loss averaged over the runs and over the steps since the last point)]"""
    k = max(1, len(runs[0].train_loss) // points)
    return [(i + k, mean(mean(r.train_loss[i:i + k]) for r in runs))
            for i in range(0, len(runs[0].train_loss) - k + 1, k)]
