"""How good is the model now? The loss on data it does not train on, measured two ways:

    estimate_loss   the mean over eval_iters random batches of a split: the same batches at every
                    eval (a fixed seed, apart from the training streams), cheap and a little noisy
    full_val_loss   one exact pass over every window of the val split (eval_full_val), what a
                    speedrun's target is judged by

In DDP the batches are shared out among the processes and their sums all-reduced.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data import BatchLoader, load_meta, prepare
from model import eval_mode
from model.checkpoint import load_checkpoint, model_from_checkpoint
from .config import TrainConfig
from .env import RunEnv
from .state import stream_seed


@torch.no_grad()
def estimate_loss(model, data_dir, split: str, cfg, env) -> float:
    loader = BatchLoader(data_dir / f"{split}.bin", cfg.block_size, cfg.batch_size, device=env.device,
                         seed=stream_seed(cfg.seed, f"eval-{split}"))
    total = torch.zeros((), device=env.device, dtype=torch.float64)
    for k in range(cfg.eval_iters):
        x, y = loader.next_batch()  # every process draws every batch, so all stay in step
        if k % env.world == env.rank:
            with env.autocast(env.eval_dtype):
                total += model(x, y)[1].double()
    return env.all_reduce(total).item() / cfg.eval_iters


class ValWindows:
    """Every val token once: consecutive windows of block_size, each predicting the next tokens,
    cut into batches of one fixed shape (a compiled model would recompile for a smaller last
    batch, so that one is padded with rows whose targets are ignored)."""

    def __init__(self, data_dir, meta, cfg, env):
        val = torch.from_numpy(np.fromfile(data_dir / "val.bin", dtype=meta["dtype"]).astype(np.int64))
        T = cfg.block_size
        n = (len(val) - 1) // T * T
        self.rows = max(cfg.batch_size, 16384 // T)  # no backward: bigger batches fit
        self.count = n // T                          # windows in all
        pad = -self.count % self.rows
        self.x = torch.cat([val[:n].view(-1, T), torch.zeros(pad, T, dtype=torch.long)]).to(env.device)
        self.y = torch.cat([val[1:n + 1].view(-1, T), torch.full((pad, T), -1)]).to(env.device)  # -1: ignored

    @torch.no_grad()
    def loss(self, model, env) -> float:
        """The exact mean loss over all val windows; each process takes every world-th batch."""
        total = torch.zeros((), device=env.device, dtype=torch.float64)
        batches = range(0, len(self.x), self.rows)
        show = env.master and sys.stderr.isatty() and len(batches) >= 20  # a bar only when it takes a while
        for k, i in enumerate(tqdm(batches, desc="full val", leave=False, disable=not show)):
            if k % env.world == env.rank:
                x, y = self.x[i:i + self.rows], self.y[i:i + self.rows]
                real = min(self.rows, self.count - i)          # windows in this batch that are not padding
                with env.autocast(env.eval_dtype):
                    total += model(x, y)[1].double() * real  # the mean over its real tokens, weighted
        return env.all_reduce(total).item() / self.count


def val_label(val_windows: ValWindows | None, cfg, env) -> str:
    """How the val loss is measured, for the log line: over which tokens, in which dtype."""
    what = (f"all {val_windows.count * cfg.block_size:,} val tokens" if val_windows is not None
            else f"{cfg.eval_iters} random batches")
    dtype = env.eval_dtype or env.dtype
    return what + ("" if dtype == torch.float32 else f", {str(dtype).removeprefix('torch.')}")


def evaluate(model, data_dir, val_windows: ValWindows | None, cfg, env) -> dict:
    """{"train": loss, "val": loss}, with dropout off for the duration."""
    with eval_mode(model):
        out = {"train": estimate_loss(model, data_dir, "train", cfg, env)}
        out["val"] = (val_windows.loss(model, env) if val_windows is not None
                      else estimate_loss(model, data_dir, "val", cfg, env))
    return out


def exact_val_loss(out_dir, ckpt: str = "ckpt.pt", device: str = "cpu") -> float:
    """The exact mean loss of a finished run's checkpoint over its whole val split, the number a
    speedrun's target is judged by: for benchmarks, measured outside the run."""
    state = load_checkpoint(Path(out_dir) / ckpt)
    cfg = TrainConfig(**{k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__})
    model = model_from_checkpoint(state, device).eval()
    data_dir = prepare(cfg.dataset, cfg.tokenizer, vocab_size=cfg.tokenizer_vocab_size, source=cfg.data_source,
                       root=cfg.data_root, quiet=True)
    env = RunEnv(torch.device(device), torch.float32, False)
    return ValWindows(data_dir, load_meta(data_dir), cfg, env).loss(model, env)
