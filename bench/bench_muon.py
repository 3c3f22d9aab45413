"""One Muon step: one Newton-Schulz per matrix vs same-shape matrices as one batch.

    OMP_NUM_THREADS=2 python bench/bench_muon.py                      # speedrun_cpu's matrices
    python bench/bench_muon.py --size=speedrun --device=cuda --compile  # the GPU model, + compiled

The matrices are the blocks' weights (GPT.parameters_by_role()["matrices"]) of a model size
from configs/NAME.toml, with random gradients: a step's cost does not depend on their values.
Rows, each the same optimizer maths (tests/test_muon.py checks they agree):
  per-matrix  the plain step: momentum, Newton-Schulz and the update, matrix by matrix
  batched     training.muon.Muon: Newton-Schulz once per shape on a (n, out, in) stack
  compiled    (--compile) Muon(compile_ns=True): the batched Newton-Schulz through Inductor;
              its first step, the compile, is reported apart
The variants take turns step by step, so a busy machine slows each alike; each row is the
median (and 10th/90th percentiles) of --repeats steps. "ops/step" counts the ATen operations
a step dispatches, views left out: on a GPU each is a kernel launch, which is what the
batching saves there (on a CPU they cost little, so the times differ less). Asserts nothing.
"""

import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in a checkout
from common.device import capability, resolve_device  # noqa: E402
from bench_decode import model_shape  # noqa: E402
from configs import ConfigError, parse_config  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from training.muon import Muon, newton_schulz_dtype, orthogonalize  # noqa: E402


@dataclass
class BenchConfig:
    size: str = "speedrun_cpu"     # model shape: the name of a configs/*.toml
    device: str = "cpu"            # cpu, cuda, auto
    repeats: int = 300             # timed steps per variant
    warmup: int = 10               # untimed steps per variant first
    compile: bool = False          # also time Muon(compile_ns=True) (Inductor; slow to start)
    threads: int = 0               # CPU threads for torch; 0 = torch's default (OMP_NUM_THREADS)


def matrices(size: str, device) -> list[torch.Tensor]:
    """The blocks' 2-D weights of the model in configs/SIZE.toml, each with a random gradient."""
    model = GPT(GPTConfig(vocab_size=65, **model_shape(size)))
    ps = [p.detach().to(device) for p in model.parameters_by_role()["matrices"]]
    for p in ps:
        p.grad = torch.randn_like(p)
    return ps


def per_matrix_step(params, bufs, lr=0.02, mu=0.95):
    """Muon's step matrix by matrix (nesterov, no weight decay): the baseline."""
    for p in params:
        buf = bufs.setdefault(p, torch.zeros_like(p))
        buf.mul_(mu).add_(p.grad)
        update = orthogonalize(p.grad.add(buf, alpha=mu))
        scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
        p.add_(update.to(p.dtype), alpha=-lr * scale)


class CountOps(TorchDispatchMode):
    """Counts the ATen operations run under it, views (no kernel of their own) left out."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "aten" and not func.is_view and func is not torch.ops.aten._unsafe_view.default:
            self.ops[func] += 1
        return func(*args, **(kwargs or {}))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - t0


def run(cfg: BenchConfig):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    variants = {}
    ps = matrices(cfg.size, device)
    bufs = {}
    variants["per-matrix"] = lambda: per_matrix_step(ps, bufs)
    variants["batched"] = Muon(matrices(cfg.size, device), lr=0.02).step
    compile_s = None
    if cfg.compile:
        variants["compiled"] = Muon(matrices(cfg.size, device), lr=0.02, compile_ns=True).step
        compile_s = timed(variants["compiled"], device)  # the first step compiles each shape

    with torch.no_grad():
        for _ in range(cfg.warmup):  # the first step also allocates the momentum buffers
            for step in variants.values():
                step()
        ops = {}
        for name in ("per-matrix", "batched"):  # a compiled step's fused kernels are not dispatched
            with CountOps() as counter:
                variants[name]()
            ops[name] = sum(counter.ops.values())
        times = {name: [] for name in variants}
        for _ in range(cfg.repeats):  # round-robin: machine noise hits every variant alike
            for name, step in variants.items():
                times[name].append(timed(step, device))

    shapes = Counter(tuple(p.shape) for p in ps)
    dtype = newton_schulz_dtype(device.type, capability(device))
    print(f"Muon step, {cfg.size}'s {len(ps)} matrices: "
          + ", ".join(f"{n} x {s[0]}x{s[1]}" for s, n in shapes.items()))
    print(f"device {device}, Newton-Schulz in {str(dtype).removeprefix('torch.')}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {cfg.repeats} steps per row")
    base = statistics.median(times["per-matrix"])
    print(f"{'':12s} {'median ms':>10s} {'p10 ms':>8s} {'p90 ms':>8s} {'speedup':>8s} {'ops/step':>9s}")
    for name, ts in times.items():
        ms = [t * 1e3 for t in sorted(ts)]
        med = statistics.median(ms)
        p10, p90 = ms[len(ms) // 10], ms[len(ms) * 9 // 10]
        print(f"{name:12s} {med:10.3f} {p10:8.3f} {p90:8.3f} {base * 1e3 / med:7.2f}x "
              f"{ops.get(name, '-'):>9}")
    if compile_s is not None:
        print(f"compiled: first step (compiling {len(shapes)} shapes) took {compile_s:.1f} s")


def main(argv=None) -> int:
    try:
        cfg = parse_config(BenchConfig, sys.argv[1:] if argv is None else argv,
                           prog="bench/bench_muon.py", description=__doc__.split("\n\n")[0])
        run(cfg)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
