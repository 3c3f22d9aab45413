"""How good is the model now? The loss on data it does not train on, measured two ways:

    estimate_loss   the mean over eval_iters random batches of a split: the same batches at every
                    eval (a fixed seed, apart from the training streams), cheap and a little noisy
    full_val_loss   one exact pass over every window of the val split (eval_full_val), what a
                    speedrun's target is judged by; of a fixed subset where the split is large

In DDP the batches are shared out among the processes and their sums all-reduced.
"""

import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data import BatchLoader, DataError, load_meta, prepare
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


def check_splits(meta, cfg, where):
    """Both splits must hold one window of block_size+1 tokens: training and evaluation draw
    them from train, evaluation from val. Checked at setup, before any step is spent."""
    need = cfg.block_size + 1
    for split in ("train", "val"):
        n = meta[f"{split}_tokens"]
        if n < need:
            fix = f"use --block_size={n - 1} or less, or give more text" if n >= 2 else "give more text"
            raise DataError(f"the {split} split of {where} has {n:,} tokens, too few for one window of "
                            f"block_size+1 = {need} tokens: {fix}")


def bits_per_byte(loss: float, meta) -> float | None:
    """The val loss (nats a token) in bits a byte of text: comparable across tokenizers. Its
    tokens-per-byte is the whole val split's (meta.json's), exact for a pass over all of it."""
    if not meta.get("val_bytes"):
        return None
    return loss / math.log(2) * meta["val_tokens"] / meta["val_bytes"]


class ValWindows:
    """Every val token once: consecutive windows of block_size, each predicting the next tokens,
    cut into batches of one fixed shape (a compiled model would recompile for a smaller last
    batch, so that one is padded with rows whose targets are ignored). A val split of more than
    eval_val_tokens is read as a fixed, seeded subset of its windows (the same at every eval),
    gathered from the memory-mapped file: it is never loaded whole."""

    def __init__(self, data_dir, meta, cfg, env):
        check_splits(meta, cfg, data_dir)  # no windows would be a division by zero below
        val = np.memmap(data_dir / "val.bin", dtype=meta["dtype"], mode="r")
        T = cfg.block_size
        self.total = (len(val) - 1) // T                 # windows in the split
        starts = np.arange(self.total)
        if cfg.eval_val_tokens and cfg.eval_val_tokens // T < self.total:
            rng = np.random.default_rng(stream_seed(cfg.seed, "val-windows"))
            starts = np.sort(rng.choice(self.total, max(1, cfg.eval_val_tokens // T), replace=False))
        w = torch.from_numpy(val[starts[:, None] * T + np.arange(T + 1)].astype(np.int64))  # (count, T+1)
        self.rows = max(cfg.batch_size, 16384 // T)  # no backward: bigger batches fit
        self.count = len(starts)                     # windows read at each eval
        pad = -self.count % self.rows
        self.x = torch.cat([w[:, :-1], torch.zeros(pad, T, dtype=torch.long)]).to(env.device)
        self.y = torch.cat([w[:, 1:], torch.full((pad, T), -1)]).to(env.device)  # -1: ignored

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
    if val_windows is None:
        what = f"{cfg.eval_iters} random batches"
    elif val_windows.count == val_windows.total:
        what = f"all {val_windows.count * cfg.block_size:,} val tokens"
    else:
        what = (f"a seeded subset of {val_windows.count * cfg.block_size:,} of the "
                f"{val_windows.total * cfg.block_size:,} val tokens")
    dtype = env.eval_dtype or env.dtype
    return what + ("" if dtype == torch.float32 else f", {str(dtype).removeprefix('torch.')}")


def evaluate(model, data_dir, meta: dict, val_windows: ValWindows | None, cfg, env) -> dict:
    """{"train": loss, "val": loss, "val_bpb": bits per byte}, with dropout off for the duration."""
    with eval_mode(model):
        out = {"train": estimate_loss(model, data_dir, "train", cfg, env)}
        out["val"] = (val_windows.loss(model, env) if val_windows is not None
                      else estimate_loss(model, data_dir, "val", cfg, env))
    out["val_bpb"] = bits_per_byte(out["val"], meta)
    return out


def exact_val_loss(out_dir, ckpt: str = "ckpt.pt", device: str = "cpu") -> float:
    """The exact mean loss of a finished run's checkpoint over its whole val split, the number a
    speedrun's target is judged by: for benchmarks, measured outside the run."""
    state = load_checkpoint(Path(out_dir) / ckpt)
    cfg = TrainConfig(**{k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__})
    model = model_from_checkpoint(state, device).eval()
    data_dir = prepare(cfg.dataset, cfg.tokenizer, vocab_size=cfg.tokenizer_vocab_size, source=cfg.data_source,
                       root=cfg.data_root, quiet=True, bpe_sample_mb=cfg.bpe_sample_mb, hf_column=cfg.hf_column,
                       hf_split=cfg.hf_split, hf_config=cfg.hf_config)
    env = RunEnv(torch.device(device), torch.float32, False)
    return ValWindows(data_dir, load_meta(data_dir), cfg, env).loss(model, env)
