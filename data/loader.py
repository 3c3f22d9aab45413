"""
BatchLoader: random windows of block_size+1 tokens from a memory-mapped train.bin / val.bin.

Each batch draws batch_size start offsets uniformly from a numpy PCG64 generator seeded by `seed`,
so the sequence of batches is a pure function of (file, seed, block_size, batch_size). Its state
is a few plain ints, saved by state_dict() into a checkpoint and restored by load_state_dict():
a resumed run sees exactly the batches an uninterrupted one would have seen.
"""

import os
from pathlib import Path

import numpy as np
import torch

from common.errors import DataError
from .prepare import DTYPES, load_meta


def split_size(path: Path) -> tuple[np.dtype, int]:
    """(token dtype, number of tokens) of a prepared split, after checking it is whole."""
    if not path.is_file():
        raise DataError(f"{path} not found; prepare the dataset first, e.g. python -m data prepare")
    dtype = load_meta(path.parent)["dtype"]  # the dtype the bins were written in
    if dtype not in DTYPES:
        raise DataError(f"unknown dtype {dtype!r} for {path}; expected uint16 or uint32")
    size = path.stat().st_size
    if size % np.dtype(dtype).itemsize:
        raise DataError(f"{path} is {size} bytes, not a whole number of {dtype} tokens; "
                        "it is truncated or corrupt, prepare again with --force")
    return np.dtype(dtype), size // np.dtype(dtype).itemsize


def read_split(bin_path, device="cpu") -> torch.Tensor:
    """A whole split as one int64 tensor on `device` (n,): what resident loaders gather their
    batches from. Read it once and give it to every loader of the split (tokens=)."""
    path = Path(bin_path)
    dtype, _ = split_size(path)
    return torch.from_numpy(np.fromfile(path, dtype=dtype).astype(np.int64)).to(device)


def free_memory(device) -> int | None:
    """Bytes free on device now (a CUDA GPU's, or the host's available RAM), or None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not on this OS
            return None
    return None


def resident_fits(bin_path, device, share=0.25) -> tuple[bool, str]:
    """(whether read_split's int64 copy of the split fits in `share` of the device's free
    memory, the figures in words): the rest is for the model, its activations and the other
    processes. A copy that does not fit is read from the memory-mapped file instead."""
    _, n = split_size(Path(bin_path))
    need, free = 8 * n, free_memory(device)
    words = f"{need / 1e9:.2f} GB as int64" + (f", {free / 1e9:.1f} GB free on {device}" if free else "")
    return free is not None and need <= share * free, words


class BatchLoader:
    """tokens: the split from read_split(), already on the device; the batches are then gathered
    there (no per-step file read or host-to-device copy; worth it when the data is small). Many
    loaders may share one such tensor: the device holds the split once."""

    def __init__(self, bin_path, block_size, batch_size, *, device="cpu", seed=0,
                 tokens: torch.Tensor | None = None):
        self.path = Path(bin_path)
        self.split = self.path.stem  # "train" / "val", for messages
        self.dtype, self.n = split_size(self.path)
        if block_size < 1 or batch_size < 1:
            raise DataError(f"block_size and batch_size must be positive, got {block_size} and {batch_size}")
        if self.n < block_size + 1:
            raise DataError(f"{self.split} split has {self.n} tokens; need at least block_size+1 = "
                            f"{block_size + 1}: use a smaller block_size or more text")
        if tokens is not None and tokens.shape != (self.n,):
            raise ValueError(f"tokens must be the {self.n} tokens of {self.path}, got shape {tuple(tokens.shape)}")
        self.block_size, self.batch_size = block_size, batch_size
        self.device = torch.device(device)
        self.seed, self.batches = seed, 0
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.tokens = tokens
        if tokens is not None:
            self.offsets = torch.arange(block_size + 1, device=self.device)

    def next_batch(self):
        """(x, y): int64 tensors of shape (batch_size, block_size) on device; y[:, t] = x[:, t+1]."""
        ix = self.rng.integers(0, self.n - self.block_size, size=self.batch_size)  # last start: n-T-1
        self.batches += 1
        if self.tokens is not None:  # the same windows, gathered on the device
            ix = torch.from_numpy(ix)
            if self.device.type == "cuda":  # from page-locked memory the copy does not block the host
                ix = ix.pin_memory()
            w = self.tokens[ix.to(self.device, non_blocking=True)[:, None] + self.offsets]
            return w[:, :-1], w[:, 1:]
        # map the file afresh each call: a long-lived np.memmap leaks memory (as noted in nanoGPT)
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        w = data[ix[:, None] + np.arange(self.block_size + 1)].astype(np.int64)
        x = torch.from_numpy(np.ascontiguousarray(w[:, :-1]))
        y = torch.from_numpy(np.ascontiguousarray(w[:, 1:]))
        if self.device.type == "cuda":  # page-locked host memory lets the copy overlap compute
            return x.pin_memory().to(self.device, non_blocking=True), \
                y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def state_dict(self):
        # plain ints and strings: JSON-safe and loadable by torch.load(weights_only=True)
        return {"seed": self.seed, "batches": self.batches, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, d):
        try:
            seed, batches = d["seed"], d["batches"]
            self.rng.bit_generator.state = d["rng"]
            self.seed, self.batches = seed, batches
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"not a BatchLoader state ({type(e).__name__}: {e})") from None
