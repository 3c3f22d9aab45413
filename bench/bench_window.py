"""Decode speed against position: full attention (re-prefilling past block_size) vs a sliding
window (the rolling KV cache), in tokens/s per stretch of positions.

    python bench/bench_window.py                           # configs/cpu.toml's shape, on the CPU
    python bench/bench_window.py --size=shakespeare_char   # nanoGPT's 10.7M-parameter shape
    python bench/bench_window.py --quick                   # a tiny model, seconds: a smoke run

Two RoPE models of one shape share the same random weights (speed does not depend on what was
learned; a window adds no parameters): one with full causal attention, one with attn_window = W
(--window; default block_size / 4). Each decodes --blocks x block_size new tokens (default 4)
from a one-token prompt, batch 1, sampling as sample.py does (temperature 0.8, top-k 200;
--greedy: argmax), and every token is timed on its own: from one token to the next, whatever
the model ran in between.
  full     the plain KV cache (model/generate.py): past block_size the context is cut and
           prefilled again (the policy: visible_context); those tokens stall, the ones after
           them attend over a shorter cache
  window   the rolling KV cache (model/kv_cache.py): a ring of W slots per layer, the same
           work for every token however far the text goes; nothing is ever prefilled again
  --static also times the static-cache decoders of both (model/fast_decode.py): on CUDA a
           CUDA graph per step, on CPU the same fixed-shape step run eagerly
The table has one row per bucket of block_size / 4 positions: each path's tokens/s over the
bucket and its slowest token in ms; '*' marks a bucket holding a re-prefill. On CUDA every token
is synchronised to be timed, which costs a little. The JSON keeps every token's time (the
median of --repeats runs) and the machine's details. Asserts nothing.
"""

import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # run from anywhere in a checkout
sys.path.insert(0, str(BENCH))         # bench_decode's helpers: model shapes, sync, machine
from bench_decode import SAMPLING, VOCAB, bench_main, machine, model_shape, sync  # noqa: E402
from configs import ConfigError  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from model.fast_decode import StaticDecoder  # noqa: E402
from model.generate import decode, visible_context  # noqa: E402

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)  # for --quick


@dataclass
class WindowBenchConfig:
    size: str = "cpu"                # model shape: a config in configs/ (its n_layer, n_head, n_embd, block_size)
    window: int = 0                  # attn_window of the windowed model; 0 = block_size / 4
    blocks: int = 4                  # new tokens = blocks x block_size
    device: str = "cpu"              # cpu, cuda or cuda:N
    static: bool = False             # also time the static-cache decoders (CUDA graphs on CUDA)
    greedy: bool = False             # argmax instead of sampling (temperature 0.8, top-k 200)
    repeats: int = 3                 # timed runs per path; each token's median is kept
    threads: int = 0                 # CPU threads for torch; 0 = torch's default
    quick: bool = False              # smoke run: a tiny model, one repeat
    out: str | None = None           # JSON path; none = bench/results/window-<device>.json
    seed: int = 0


def reprefills(prompt_len: int, new: int, config) -> list[int]:
    """Which new tokens (their index) a decode path makes right after a re-prefill, following
    model/generate.py's policy (visible_context)."""
    T, out = visible_context(prompt_len, config, config.block_size), []
    for t in range(1, new):
        seen = visible_context(T + 1, config)
        if seen < T + 1:
            out.append(t)
        T = seen
    return out


def time_tokens(steps, device) -> list[float]:
    """Seconds from the start (or the previous token) to each token a decode generator yields."""
    times = []
    sync(device)
    t0 = time.perf_counter()
    for _ in steps:
        sync(device)  # on CUDA, the token's kernels are done: its time is its own
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
    return times


def cache_mib(cfg: GPTConfig, slots: int, dtype) -> float:
    """Keys and values of one sequence, every layer: 2 x n_layer x n_kv_head x slots x head_size."""
    return 2 * cfg.n_layer * cfg.n_kv_head * slots * cfg.head_size * torch.finfo(dtype).bits / 8 / 2**20


def bench(cfg: WindowBenchConfig, say=print) -> dict:
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device={cfg.device}, but there is no CUDA GPU here; use --device=cpu")
    shape = dict(TINY) if cfg.quick else model_shape(cfg.size)
    full_cfg = GPTConfig(vocab_size=VOCAB, **{**shape, "pos_emb": "rope", "attn_window": 0})
    bs = full_cfg.block_size
    window = cfg.window or max(1, bs // 4)
    win_cfg = replace(full_cfg, attn_window=window)   # checks 0 < window <= block_size
    if cfg.blocks < 1 or cfg.repeats < 1:
        raise ConfigError(f"--blocks and --repeats must be at least 1, got {cfg.blocks} and {cfg.repeats}")
    torch.manual_seed(cfg.seed)
    full = GPT(full_cfg).to(device).eval()
    win = GPT(win_cfg).to(device).eval()
    win.load_state_dict(full.state_dict())            # the same weights: only the mask differs
    dtype = full.wte.weight.dtype
    new, repeats = cfg.blocks * bs, 1 if cfg.quick else cfg.repeats
    keep = visible_context(bs + 1, full_cfg)           # what a full context keeps of itself
    sampling = dict(temperature=0) if cfg.greedy else dict(SAMPLING)
    idx = torch.zeros(1, 1, dtype=torch.long, device=device)
    info = machine(device, dtype)
    info["command"] = " ".join(["python", "bench/bench_window.py", *sys.argv[1:]]) if say is print else None
    info["sampling"] = "greedy" if cfg.greedy else SAMPLING
    say(f"decode speed against position on {info.get('gpu', info['cpu'])} ({device}, {info['dtype']}, "
        f"{info['threads']} threads, torch {info['torch']})")
    say(f"model: {cfg.size if not cfg.quick else 'tiny'} shape {shape}, RoPE, "
        f"{full.num_params() / 1e6:.2f}M parameters; {new} new tokens from a 1-token prompt, batch 1, "
        f"{'greedy' if cfg.greedy else 'sampling'}, median of {repeats} run(s)")
    say(f"  full:   KV cache of block_size = {bs} positions ({cache_mib(full_cfg, bs, dtype):.2f} MiB), "
        f"cut to the last {keep} and prefilled again when full")
    say(f"  window: rolling cache, a ring of attn_window = {window} slots ({cache_mib(win_cfg, window, dtype):.2f} MiB)")

    paths = {"full": (full, False), "window": (win, False)}
    if cfg.static:
        paths.update({"full-static": (full, True), "window-static": (win, True)})
    results = {}
    for name, (model, static) in paths.items():
        dec = None
        if static:
            dec = StaticDecoder(model, 1)
            dec.verify()  # a broken graph is not a fast one

        def steps(n):
            if dec is not None:
                return dec.decode(idx, n, seed=cfg.seed, **sampling)
            return decode(model, idx, n, seed=cfg.seed, **sampling)
        time_tokens(steps(min(new, 2 * bs)), device)  # warm-up: allocator, kernels, a re-prefill
        runs = [time_tokens(steps(new), device) for _ in range(repeats)]
        per_token = [statistics.median(ts) for ts in zip(*runs)]
        stalls = reprefills(1, new, full_cfg if name.startswith("full") else win_cfg)
        results[name] = dict(seconds_per_token=per_token, reprefill_tokens=stalls,
                             tok_per_s=new / sum(per_token))
        del dec
    bucket = max(1, bs // 4)
    rows = buckets(results, new, bucket)
    say("")
    say(table(rows, list(results)))
    say("\noverall: " + ", ".join(f"{n} {r['tok_per_s']:,.0f} tok/s" for n, r in results.items()))
    result = dict(machine=info, settings=dict(size="tiny" if cfg.quick else cfg.size, shape=shape,
                                              attn_window=window, block_size=bs, new_tokens=new,
                                              keep=keep, repeats=repeats, bucket=bucket,
                                              static=cfg.static),
                  rows=rows, paths=results)
    out = Path(cfg.out or BENCH / "results" / f"window-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    say(f"\nwrote {out}")
    return result


def buckets(results: dict, new: int, size: int) -> list[dict]:
    """One row per `size` new tokens: positions, and per path tokens/s, slowest token, re-prefill."""
    rows = []
    for lo in range(0, new, size):
        hi = min(new, lo + size)
        row = dict(first=lo + 1, last=hi)          # positions: the prompt is position 0
        for name, r in results.items():
            ts = r["seconds_per_token"][lo:hi]
            row[name] = dict(tok_per_s=len(ts) / sum(ts), slowest_ms=1000 * max(ts),
                             reprefill=any(lo <= t < hi for t in r["reprefill_tokens"]))
        rows.append(row)
    return rows


def table(rows: list[dict], names: list[str]) -> str:
    head = f"{'positions':>11}" + "".join(f"{n + ' tok/s':>20}{'slowest ms':>12}" for n in names)
    lines = [head]
    for row in rows:
        cells = ""
        for n in names:
            c = row[n]
            mark = " *" if c["reprefill"] else "  "
            cells += f"{c['tok_per_s']:>18,.0f}{mark}{c['slowest_ms']:>12.2f}"
        lines.append(f"{row['first']:>5}-{row['last']:<5}" + cells)
    if any(row[n]["reprefill"] for row in rows for n in names):
        lines.append("* a re-prefill in this bucket: the context was cut and prefilled again")
    return "\n".join(lines)


def with_threads(cfg: WindowBenchConfig):
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        bench(cfg)
    finally:
        torch.set_num_threads(threads)


def main(argv=None) -> int:
    return bench_main(WindowBenchConfig, argv, with_threads, prog="bench/bench_window.py", doc=__doc__,
                      no_config="to time the model of configs/NAME.toml, write --size=NAME")


if __name__ == "__main__":
    sys.exit(main())
