"""One row times GPT-2's head, (1, 768) x (50257, 768)^T, each way our decode paths can compute it.

    OMP_NUM_THREADS=2 python bench/bench_matvec.py

A decode step at batch 1 is a row times each weight matrix, so its speed is how fast a kernel
streams the weights. Rows: torch's matmul (float32, bfloat16), torch's CPU int8 kernel
(torch._weight_int8pack_mm, bf16 activations), and model/matvec.py's multiply-and-sum compiled
by torch.compile (float32 weights, and int8 weights widened inside the loop). Each prints its
median time and the weight bytes it read per second, beside a plain sum over 1 GiB (what the
memory gives).
"""

import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in a checkout
from model.matvec import MatVec  # noqa: E402
from model.quantize import Int8Linear  # noqa: E402


def median_ms(fn, repeats=50):
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


@torch.no_grad()
def main():
    torch.manual_seed(0)
    head = nn.Linear(768, 50257, bias=False)
    x = torch.randn(1, 1, 768)
    int8 = Int8Linear.from_linear(head.weight)
    big = torch.ones(1 << 28)
    rows = [("plain sum over 1 GiB (memory)", big.numel() * 4, lambda: big.sum())]
    rows.append(("float32 matmul (F.linear)", head.weight.numel() * 4, lambda: head(x)))
    bf16, xb = copy.deepcopy(head).to(torch.bfloat16), x.bfloat16()
    rows.append(("bfloat16 matmul", head.weight.numel() * 2, lambda: bf16(xb)))
    rows.append(("int8 torch._weight_int8pack_mm", int8.weight.numel(), lambda: int8(x)))
    f32 = torch.compile(MatVec(head), fullgraph=True)
    rows.append(("float32 multiply-and-sum, compiled", head.weight.numel() * 4, lambda: f32(x)))
    i8 = torch.compile(MatVec(int8), fullgraph=True)
    rows.append(("int8 multiply-and-sum, compiled", int8.weight.numel(), lambda: i8(x)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of 50")
    for name, nbytes, fn in rows:
        ms = median_ms(fn, 10 if nbytes > 1e9 else 50)
        print(f"{name:38s} {ms:8.2f} ms {nbytes / ms / 1e6:6.1f} GB/s")


if __name__ == "__main__":
    main()
