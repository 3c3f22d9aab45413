"""What int8 weights cost in loss: a checkpoint's val loss in float32, bfloat16 and int8 weights.

    python bench/bench_int8_loss.py --out_dir=out                 # the CPU default's checkpoint
    python bench/bench_int8_loss.py --out_dir=out-char --windows=100

The same val windows for every dtype (consecutive block_size windows from the start of the run's
prepared val.bin), so the differences are paired; int8 is model/quantize.py's int8 weight-only
layers over bfloat16 activations, as sample.py --int8 decodes on a CPU that computes bf16.
Prints the losses and each one's change from float32; asserts nothing.
"""

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in a checkout
from data.prepare import DEFAULT_ROOT, DTYPES, load_meta  # noqa: E402
from model.checkpoint import load_run  # noqa: E402
from model.quantize import quantize_int8  # noqa: E402


def val_tokens(tokenizer) -> np.ndarray:
    """The val.bin of a prepared dataset written with this tokenizer."""
    for meta in sorted(DEFAULT_ROOT.glob("*/meta.json")):
        m = load_meta(meta)
        if m["tokenizer"] == tokenizer.to_dict():
            return np.memmap(meta.parent / "val.bin", dtype=DTYPES[m["dtype"]], mode="r")
    sys.exit(f"error: no prepared dataset in {DEFAULT_ROOT} has this checkpoint's tokenizer")


@torch.no_grad()
def loss(model, data, block, windows, batch=8):
    total, n = 0.0, 0
    starts = list(range(0, min(windows * block, len(data) - block - 1), block))
    for i in range(0, len(starts), batch):
        rows = starts[i:i + batch]
        x = torch.tensor(np.stack([data[s:s + block] for s in rows]).astype(np.int64))
        y = torch.tensor(np.stack([data[s + 1:s + block + 1] for s in rows]).astype(np.int64))
        _, l = model(x, y)
        total, n = total + l.item() * len(rows), n + len(rows)
    return total / n, n * block


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default="out")
    p.add_argument("--windows", type=int, default=200, help="val windows of block_size tokens")
    args = p.parse_args()
    model, tokenizer = load_run(args.out_dir)
    data = val_tokens(tokenizer)
    block = model.config.block_size
    models = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16),
              "int8": quantize_int8(copy.deepcopy(model).to(torch.bfloat16))}
    base = None
    for name, m in models.items():
        value, tokens = loss(m, data, block, args.windows)
        base = value if base is None else base
        print(f"{args.out_dir}: {name:8s} val loss {value:.4f} ({value - base:+.4f}) over {tokens:,} val tokens",
              flush=True)


if __name__ == "__main__":
    main()
