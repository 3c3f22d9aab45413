"""bfloat16 against float32 on this machine, for each place the project could use it on a CPU:

    python bench/bench_bf16.py                  # torch's default threads
    OMP_NUM_THREADS=2 python bench/bench_bf16.py --repeats=30

  newton-schulz  one Muon step's orthogonalisation of the speedrun_cpu model's matrices
  decode         sample.py's cached decode of 64 tokens for 1, 16 and 64 sequences at once
                 (num_samples), the shakespeare_char shape with random weights
  evaluation     a forward pass over a batch of val windows, no gradients (the full-val pass)
  training       a forward + backward of speedrun_cpu's batch, float32 against bf16 autocast

Each row runs both dtypes in turn, step by step (a busy machine slows both alike), and prints the
medians, their ratio, and what dtype=auto picks on this machine (the rule: common/device.py,
default_dtype). Asserts nothing; writes the table as JSON.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.device import cpu_bf16, default_dtype  # noqa: E402
from configs import build, load_config_file  # noqa: E402
from model import GPT  # noqa: E402
from model.generate import decode  # noqa: E402
from training.config import TrainConfig, model_config  # noqa: E402
from training.muon import newton_schulz_dtype, orthogonalize  # noqa: E402

DTYPES = (torch.float32, torch.bfloat16)


def model_of(config: str, vocab: int = 65) -> tuple[GPT, TrainConfig]:
    cfg = build(TrainConfig, load_config_file(TrainConfig, config))
    torch.manual_seed(0)
    return GPT(model_config(cfg, vocab)).eval(), cfg


def newton_schulz():
    model, _ = model_of("speedrun_cpu")
    by_shape = {}
    for p in model.parameters_by_role()["matrices"]:
        by_shape.setdefault(tuple(p.shape), []).append(torch.randn_like(p))
    stacks = [torch.stack(g) for g in by_shape.values()]

    def run(dtype):
        for G in stacks:
            orthogonalize(G, dtype=dtype)
    return run, newton_schulz_dtype("cpu", None)


def decoding(rows: int):
    model, _ = model_of("shakespeare_char")
    copies = {d: GPT(model.config).to(d).eval() for d in DTYPES}
    for m in copies.values():
        m.load_state_dict(model.state_dict())
    idx = torch.zeros(rows, 1, dtype=torch.long)

    def run(dtype):
        for _ in decode(copies[dtype], idx, 64, temperature=0.8, top_k=200, seed=0):
            pass
    return run, default_dtype("cpu", use="decode")


def evaluation():
    model, cfg = model_of("speedrun_cpu")
    copies = {d: GPT(model.config).to(d).eval() for d in DTYPES}
    for m in copies.values():
        m.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 65, (256, cfg.block_size), generator=g)
    y = torch.randint(0, 65, (256, cfg.block_size), generator=g)

    @torch.no_grad()
    def run(dtype):
        copies[dtype](x, y)
    return run, default_dtype("cpu", use="eval")


def training():
    model, cfg = model_of("speedrun_cpu")
    model.train()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 65, (cfg.batch_size, cfg.block_size), generator=g)
    y = torch.randint(0, 65, (cfg.batch_size, cfg.block_size), generator=g)

    def run(dtype):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            _, loss = model(x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return run, default_dtype("cpu", use="train")


USES = {"newton-schulz": newton_schulz, "decode, 1 row": lambda: decoding(1),
        "decode, 16 rows": lambda: decoding(16), "decode, 64 rows": lambda: decoding(64),
        "evaluation": evaluation, "training": training}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20, help="timed runs of each dtype per use")
    p.add_argument("--out", default="bench/results/bf16.json")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; this CPU computes bf16 natively "
          f"(AVX512-BF16 or AMX): {cpu_bf16()}")
    print(f"{'use':<16} {'float32 ms':>10} {'bf16 ms':>9} {'bf16 speed-up':>13}  dtype=auto here")
    rows = []
    for name, make in USES.items():
        run, auto = make()
        times = {d: [] for d in DTYPES}
        for d in DTYPES:  # warm-up: first-touch, oneDNN's kernel choice
            run(d)
        for _ in range(args.repeats):
            for d in DTYPES:
                t = time.perf_counter()
                run(d)
                times[d].append(time.perf_counter() - t)
        f32, b16 = (1000 * statistics.median(times[d]) for d in DTYPES)
        rows.append({"use": name, "float32_ms": f32, "bfloat16_ms": b16, "speedup": f32 / b16,
                     "auto": str(auto).removeprefix("torch.")})
        print(f"{name:<16} {f32:10.2f} {b16:9.2f} {f32 / b16:12.2f}x  {rows[-1]['auto']}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "cpu_bf16": cpu_bf16(), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
