"""Decode speed: uncached vs KV cache vs the static cache (+ CUDA graph), in tokens/s.

    python bench/bench_decode.py                          # this machine's device, both sizes
    python bench/bench_decode.py --device=cpu --out=cpu.json
    python bench/bench_decode.py --quick                  # a tiny model, seconds: a smoke run

For each model size (random weights: speed does not depend on what was learned), batch size
and prompt length (1 and block_size/2), each path generates up to a full window (block_size -
prompt tokens) and is timed end to end, prefill included. Tokens are sampled as sample.py does
by default (temperature 0.8, top-k 200), sampling included in the time; --greedy takes the
argmax instead (a little faster: no sort, softmax or random numbers per token).
  uncached  the whole context through the model for every token (nanoGPT's way)
  cached    the plain KV cache (model/generate.py), eager PyTorch
  fast      the static cache (model/fast_decode.py): one decode step replayed as a CUDA graph
            on CUDA; on CPU there are no graphs and the same fixed-shape step runs eagerly.
            Each decoder passes verify() before it is timed: a broken graph is not a fast one
  compiled  (--compile) the fast path with its step through torch.compile
Prints one table and writes it, with the machine's details, as JSON. Asserts nothing.

Memory ("mem MiB"): what decoding needs beyond the weights, the cache and activations: the peak
during the run above the memory at its start, plus, for the static paths, the buffers (and CUDA
graph pool) allocated when the decoder was built. On CUDA that is torch's allocated memory,
exact; on CPU it is the growth of the process's resident set (VmHWM, reset before each run),
rougher, as the allocator keeps and reuses memory freed by earlier runs. The JSON also holds
each run's absolute peak.

The uncached path at a large batch on a CPU takes many minutes per window, so there it is
timed on every --uncached_stride-th step only (the forward of that step's full context) and
the total scaled up; those rows say "est.".
"""

import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in a checkout
from common.device import resolve_device, resolve_dtype  # noqa: E402
from configs import CONFIG_DIR, ConfigError, load_config_file, parse_config  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from model.fast_decode import DecodeCheckError, StaticDecoder  # noqa: E402
from model.generate import decode, sample_next  # noqa: E402
from training.config import TrainConfig  # noqa: E402

VOCAB = 65  # Tiny Shakespeare's characters
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)  # for --quick
SAMPLING = dict(temperature=0.8, top_k=200)  # sample.py's defaults (tests/test_sample_bench.py checks)


@dataclass
class BenchConfig:
    device: str = "auto"             # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N
    dtype: str = "auto"              # auto: as sample.py decodes (common/device.py, default_dtype)
    sizes: str = "shakespeare_char,cpu"  # model shapes: names of configs/*.toml (or "tiny"), comma-separated
    batch_sizes: str = "1,64"        # comma-separated
    paths: str = "uncached,cached,fast"  # any of uncached, cached, fast, compiled
    compile: bool = False            # also time the compiled fast path (slow to start)
    greedy: bool = False             # argmax instead of sampling (temperature 0.8, top-k 200)
    repeats: int = 0                 # timed runs per row, median reported; 0 = 3 on CUDA, 1 on CPU
    uncached_stride: int = 0         # 0 = 1, or 16 for batch >= 16 on CPU (see the docstring)
    threads: int = 0                 # CPU threads for torch; 0 = torch's default
    quick: bool = False              # smoke run: the tiny model, batch 1 and 4
    out: str | None = None           # JSON path; none = bench/results/decode-<device>.json
    seed: int = 0


def model_shape(name: str) -> dict:
    """GPTConfig keywords for a size: the model keys of configs/NAME.toml (with its base's)."""
    if name == "tiny":
        return dict(TINY)
    path = CONFIG_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"no size {name!r}: use tiny or a config in {CONFIG_DIR} "
                          f"({', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.toml')))})")
    values = load_config_file(TrainConfig, name)
    model_keys = {f.name for f in fields(GPTConfig)} - {"vocab_size", "dropout"}
    return {k: v for k, v in values.items() if k in model_keys}


# -----------------------------------------------------------------------------
# measuring

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Memory:
    """Memory in bytes: on CUDA what torch has allocated, on CPU the process's resident set."""

    def __init__(self, device):
        self.device = device

    def now(self):
        sync(self.device)
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return self._rss("VmRSS")

    def start(self):
        """Begin a window: forget the peak so far."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                pass
        self.base = self.now()

    def stop(self):
        """(peak in the window, peak - at its start), in MiB."""
        sync(self.device)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = self._rss("VmHWM")
        if peak is None or self.base is None:
            return None, None
        return peak / 2**20, (peak - self.base) / 2**20

    @staticmethod
    def _rss(key):
        try:
            m = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
        except OSError:
            return None
        return int(m.group(1)) * 1024 if m else None


def time_decode(steps, device) -> float:
    """Consume a decode generator; seconds until its last token is on the device."""
    sync(device)
    t0 = time.perf_counter()
    for _ in steps:
        pass
    sync(device)
    return time.perf_counter() - t0


def time_uncached_strided(model, idx, new, stride, device, pick) -> float:
    """Estimate the uncached decode of `new` tokens: time the full-context forward (and pick)
    of every stride-th step and scale by the stride. Each step's cost depends only on its
    context length."""
    B, T0 = idx.shape
    total = 0.0
    with torch.no_grad():
        for step in range(0, new, stride):
            ctx = torch.randint(0, VOCAB, (B, T0 + step), device=device)
            sync(device)
            t0 = time.perf_counter()
            logits = model(ctx, last_only=True)[0][:, -1]
            pick(logits)
            sync(device)
            total += (time.perf_counter() - t0) * min(stride, new - step)
    return total


def bench_size(name, cfg, device, dtype, batch_sizes, paths, repeats, say):
    shape = model_shape(name)
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(vocab_size=VOCAB, **shape)).to(device=device, dtype=dtype).eval()
    bs = model.config.block_size
    params = model.num_params()
    say(f"\n{name}: {params / 1e6:.2f}M parameters, {shape}")
    mem = Memory(device)
    rows, uncached = [], {}
    sampling = dict(temperature=0) if cfg.greedy else SAMPLING
    for B in batch_sizes:
        # path by path, so no path's buffers are alive (and counted) while another runs
        for path in paths:
            dec, setup_s, held = None, None, 0.0
            if path in ("fast", "compiled"):
                # build (on CUDA: capture) once per batch size, timed and measured apart; the
                # static cache and the graph's memory pool stay allocated, so count them per row
                before = mem.now()
                t0 = time.perf_counter()
                dec = StaticDecoder(model, B, compile=path == "compiled")
                dec.verify()
                sync(device)
                setup_s = time.perf_counter() - t0
                held = (mem.now() - before) / 2**20 if before is not None else 0.0
            for prompt_len in (1, bs // 2):
                idx = torch.randint(0, VOCAB, (B, prompt_len), device=device)
                new = bs - prompt_len

                def steps(n):
                    if dec is not None:
                        return dec.decode(idx, n, seed=cfg.seed, **sampling)
                    return decode(model, idx, n, seed=cfg.seed, use_cache=path == "cached", **sampling)

                generator = torch.Generator(device).manual_seed(cfg.seed)  # for the strided estimate

                def pick(logits):
                    return sample_next(logits, generator=generator, **sampling)
                stride = cfg.uncached_stride or (16 if device.type == "cpu" and B >= 16 else 1)
                estimated = path == "uncached" and stride > 1
                time_decode(steps(min(new, 8)), device)  # warm-up: allocator, kernels, caches
                times = []
                for _ in range(repeats):
                    mem.start()
                    if estimated:
                        times.append(time_uncached_strided(model, idx, new, stride, device, pick))
                    else:
                        times.append(time_decode(steps(new), device))
                    peak, extra = mem.stop()
                t = statistics.median(times)
                tok_s = B * new / t
                if path == "uncached":
                    uncached[B, prompt_len] = tok_s
                base = uncached.get((B, prompt_len))
                row = dict(size=name, params=params, batch=B, prompt=prompt_len, new=new, path=path,
                           seconds=t, tok_per_s=tok_s, ms_per_step=1000 * t / new,
                           speedup=tok_s / base if base else None, peak_mib=peak,
                           mem_mib=None if extra is None else extra + held, setup_s=setup_s,
                           repeats=repeats, note=f"est. (every {stride}th step)" if estimated else "")
                rows.append(row)
                say(format_row(row))
            del dec
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# -----------------------------------------------------------------------------
# output

HEADER = (f"{'size':<17}{'params':>7}{'batch':>6}{'prompt':>7}{'new':>5}  {'path':<9}{'tok/s':>11}"
          f"{'ms/step':>9}{'vs unc.':>8}{'mem MiB':>9}  note")


def format_row(r) -> str:
    speed = f"{r['speedup']:.1f}x" if r["speedup"] else "-"
    mem = f"{r['mem_mib']:.0f}" if r["mem_mib"] is not None else "-"
    return (f"{r['size']:<17}{r['params'] / 1e6:>6.2f}M{r['batch']:>6}{r['prompt']:>7}{r['new']:>5}  "
            f"{r['path']:<9}{r['tok_per_s']:>11,.0f}{r['ms_per_step']:>9.2f}{speed:>8}{mem:>9}  "
            f"{r['note']}")


def machine(device, dtype) -> dict:
    info = dict(device=str(device), dtype=str(dtype).removeprefix("torch."), torch=torch.__version__,
                python=platform.python_version(), cpu=platform.processor() or platform.machine(),
                threads=torch.get_num_threads(), cores=os.cpu_count())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_avg_at_start"] = round(os.getloadavg()[0], 2)
    return info


def run(cfg: BenchConfig, say=print) -> dict:
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, say)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: BenchConfig, say) -> dict:
    device = resolve_device(cfg.device)      # the one rule train.py and sample.py use
    dtype = resolve_dtype(cfg.dtype, device, use="decode")  # auto: as sample.py decodes
    sizes = cfg.sizes.split(",") if not cfg.quick or cfg.sizes != BenchConfig.sizes else ["tiny"]
    try:
        batches = [int(b) for b in ("1,4" if cfg.quick and cfg.batch_sizes == BenchConfig.batch_sizes
                                    else cfg.batch_sizes).split(",")]
    except ValueError:
        raise ConfigError(f"--batch_sizes={cfg.batch_sizes}: write whole numbers separated by commas, "
                          f"e.g. --batch_sizes=1,64") from None
    paths = cfg.paths.split(",") + (["compiled"] if cfg.compile and "compiled" not in cfg.paths else [])
    unknown = set(paths) - {"uncached", "cached", "fast", "compiled"}
    if unknown:
        raise ConfigError(f"--paths: unknown {sorted(unknown)}; use uncached, cached, fast, compiled")
    for name in sizes:
        model_shape(name)  # a typo fails now, not after the first size's minutes
    repeats = cfg.repeats or (3 if device.type == "cuda" else 1)
    info = machine(device, dtype)
    info["command"] = " ".join(["python", "bench/bench_decode.py", *sys.argv[1:]]) if say is print else None
    info["sampling"] = "greedy" if cfg.greedy else SAMPLING
    how = "greedy" if cfg.greedy else "sampling at temperature {temperature}, top-k {top_k}".format(**SAMPLING)
    say(f"decode benchmark on {info.get('gpu', info['cpu'])} ({device}, {info['dtype']}, "
        f"{info['threads']} threads, torch {info['torch']}); {how}, generating up to block_size")
    say(HEADER)
    rows = []
    for name in sizes:
        rows += bench_size(name, cfg, device, dtype, batches, paths, repeats, say)
    if hasattr(os, "getloadavg"):
        info["load_avg_at_end"] = round(os.getloadavg()[0], 2)
    result = dict(machine=info, rows=rows)
    out = Path(cfg.out or Path(__file__).parent / "results" / f"decode-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    say(f"\nwrote {out}")
    return result


def bench_main(cls, argv, body, *, prog: str, doc: str, no_config: str) -> int:
    """A decode benchmark's main: its settings from the command line, body(cfg) without grad,
    and each mistake as one error: line."""
    try:
        cfg = parse_config(cls, sys.argv[1:] if argv is None else argv, prog=prog,
                           description=doc.split("\n\n")[0], no_config=no_config)
        with torch.no_grad():
            body(cfg)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except DecodeCheckError as e:  # a broken fast path: its timings would mean nothing
        print(f"error: the fast decode path failed its self-check: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return bench_main(BenchConfig, argv, run, prog="bench/bench_decode.py", doc=__doc__,
                      no_config="to time the model of configs/NAME.toml, write --sizes=NAME")


if __name__ == "__main__":
    sys.exit(main())
