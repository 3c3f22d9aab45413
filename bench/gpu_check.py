"""Check everything the GPU path relies on, in one command, on the machine you have.

    python bench/gpu_check.py                 on a CUDA machine: every check (a few minutes)
    python bench/gpu_check.py --device=cpu    the checks that make sense without a GPU (CI runs this)

Prints one table, a row per check: PASS or FAIL, the check's name, and its figures; writes the
same as JSON (bench/results/gpu_check-<device>.json); exits 1 if any check failed. On a machine
without a GPU the plain command says so and runs the CPU subset.

The checks (CPU: the same, smaller, where they make sense):
  cuda tests        the CUDA-only tests of the suite (pytest -m cuda)                    GPU only
  train bf16        ~100 steps of the shakespeare_char model, bf16 + torch.compile:
                    the loss falls, no non-finite step; ms/step, tok/s, MFU, warm-up     GPU only
  train fp16        the same in fp16 with the GradScaler (what GPUs without native
                    bf16, T4 and V100, run)                                              GPU only
  train             (CPU) a short run of the cpu config's model: the loss falls
  resume            N steps in one go against N/2 + --init_from=resume: the same data
                    order, losses within a stated tolerance (bit for bit on the CPU)
  decode paths      uncached, KV cache and static (CUDA graph on a GPU): the same greedy
                    tokens in float32, past block_size
  decode bf16       the static path against the KV cache in bfloat16: logits within 5e-2
                    of the largest, the same greedy tokens
  self-check        the static decoder's verify() (CUDA graph / compiled step against the
                    eager step), as sample.py runs it before the first token
  decode speed      tokens/s at batch 1 and 64 with sampling on (temperature 0.8, top-k
                    200): KV cache and static path
  torchrun          2 processes: gloo on the CPU (on a GPU host too: what a CPU run must
                    do there), and NCCL on two GPUs where there are two
  int8 static       int8 weights (bf16 activations where native): the static step passes
                    its self-check, and its greedy tokens equal the KV cache's
  speculative       speculative greedy decoding (model/speculative.py) over the KV cache:
                    the plain cache's tokens, in fewer forwards
The training checks use the offline default corpus (Shakespeare's plays, char-level), so no
network is needed.
"""

import argparse
import json
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

def train_cmd(out_dir, device, shape, *extra, python=(sys.executable,)):
    return [*python, str(ROOT / "train.py"), "--dataset=shakespeare", "--tokenizer=char",
            f"--out_dir={out_dir}", f"--device={device}", "--dropout=0.0",
            *[f"--{k}={v}" for k, v in shape.items()], *extra]


def run(cmd, timeout=900, env=None):
    env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def losses(out_dir):
    return [(r["iter"], r["loss"]) for r in read_records(Path(out_dir) / "metrics.jsonl")[0] if r["kind"] == "train"]


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


# -----------------------------------------------------------------------------
# the checks

def check_cuda_tests(c, args):
    p = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"], timeout=1800)
    summary = (p.stdout.strip().splitlines() or [""])[-1]
    c.figures["pytest"] = summary
    c.need(p.returncode == 0, f"pytest -m cuda exited {p.returncode}: {summary}")


def check_train(c, args, dtype, steps, compile):
    device, shape = args.device, SHAPES[args.kind]
    with tempfile.TemporaryDirectory() as tmp:
        batch = 64 if args.kind == "cuda" else 8
        p = run(train_cmd(Path(tmp) / "out", device, shape, f"--dtype={dtype}", f"--compile={compile}",
                          f"--max_iters={steps}", f"--eval_interval={steps}", "--eval_iters=10",
                          f"--log_interval={max(1, steps // 10)}", f"--batch_size={batch}", "--warmup_iters=10",
                          "--learning_rate=1e-3"))
        c.need(p.returncode == 0, f"train.py exited {p.returncode}: {p.stderr.strip()[-300:]}")
        if p.returncode != 0:
            return
        records = read_records(Path(tmp) / "out" / "metrics.jsonl")[0]
    train = [r for r in records if r["kind"] == "train"]
    warm = next(r["seconds"] for r in records if r["kind"] == "warmup")
    last = train[-1]
    c.figures.update(loss=f"{train[0]['loss']:.3f} -> {last['loss']:.3f}", tok_per_s=round(last["tok_per_s"]),
                     ms_per_step=round(1000 * batch * shape["block_size"] / last["tok_per_s"], 1),
                     mfu=None if last["mfu"] is None else round(last["mfu"], 3), warmup_s=round(warm, 1))
    c.need(last["loss"] < train[0]["loss"] - 0.5, "the loss did not fall by 0.5")


def check_resume(c, args):
    device, shape = args.device, SHAPES[args.kind]
    tol = 0.0 if args.kind == "cpu" else 2e-3  # GPU kernels (atomics in backward) are not bit-deterministic
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--dtype=float32", "--compile=false", "--max_iters=20", "--lr_decay_iters=20",
                  "--eval_interval=10", "--eval_iters=2",
                  "--log_interval=1", "--batch_size=4", "--warmup_iters=2", "--dropout=0.1",
                  "--gradient_accumulation_steps=2"]
        a, b = Path(tmp) / "straight", Path(tmp) / "halves"
        runs = [run(train_cmd(a, device, shape, *common)),
                run(train_cmd(b, device, shape, *common, "--max_iters=10")),
                run(train_cmd(b, device, shape, *common, "--init_from=resume"))]
        for p in runs:
            c.need(p.returncode == 0, f"train.py exited {p.returncode}: {p.stderr.strip()[-300:]}")
        if not c.ok:
            return
        la, lb = losses(a), losses(b)
    diff = max(abs(x[1] - y[1]) for x, y in zip(la, lb))
    c.figures.update(steps=len(la), max_loss_diff=diff, tolerance=tol)
    c.need([i for i, _ in la] == [i for i, _ in lb], "the resumed run logged other steps")
    c.need(diff <= tol, f"losses differ by {diff:.2e} > {tol}")


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


class _fp32_matmuls:
    """fp32 means fp32 for the token-for-token check: no TF32 matmuls."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


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
    shape = SHAPES[args.kind]
    dtype = torch.bfloat16 if native_bf16(args.device.type, capability(args.device)) else torch.float32
    for compile in (False, True) if (args.kind == "cuda" or not args.quick) else (False,):
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


def check_torchrun(c, args):
    shape = SHAPES["cpu"] | dict(n_layer=2, n_embd=64)
    runs = [("gloo_cpu", "cpu")] + ([("nccl_2gpu", "cuda")] if torch.cuda.device_count() >= 2 else [])
    for name, device in runs:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = train_cmd(Path(tmp) / "out", device, shape, "--max_iters=4", "--eval_interval=4", "--eval_iters=2",
                            "--batch_size=4", "--log_interval=1", "--compile=false",
                            python=(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
            p = run(cmd, env={"OMP_NUM_THREADS": "1"})
            ok = p.returncode == 0 and "2 processes" in p.stdout and len(losses(Path(tmp) / "out")) == 4
        c.figures[name] = "ok" if ok else f"exit {p.returncode}"
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
    from model.speculative import SpeculativeDecoder
    shape = SHAPES[args.kind]
    with _fp32_matmuls():
        model = peaked_model(args.device, **shape)
        idx = torch.randint(0, 65, (1, 3), generator=torch.Generator().manual_seed(0)).to(args.device)
        n = 2 * shape["block_size"]
        _, cached = tokens_and_logits(decode(model, idx, n, temperature=0))
        spec = SpeculativeDecoder(model, None, 8, lookup_n=2)
        _, got = tokens_and_logits(spec.decode(idx, n, temperature=0))
    c.figures.update(tokens=n, forwards=spec.forwards, accepted=f"{spec.accepted}/{spec.proposed}")
    c.need(torch.equal(got, cached), "speculative greedy tokens differ from the KV cache's")


def sampling_checks():
    return [("int8 static", check_int8_static, ()), ("speculative greedy", check_speculative, ())]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda if there is a GPU), cuda, cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="on the CPU: skip the compiled self-check (the slowest check, compiling)")
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
    bf16 = native_bf16(args.device.type, capability(args.device))

    checks = []
    if args.kind == "cuda":
        checks.append(("cuda tests", check_cuda_tests, ()))
        if bf16:
            checks.append(("train bf16 + compile", check_train, ("bfloat16", 100, "true")))
        checks.append(("train fp16 + GradScaler", check_train, ("float16", 100, "false")))
    else:
        checks.append(("train", check_train, ("float32", 40, "false")))
    checks += [("resume", check_resume, ()), ("decode paths fp32", check_decode_paths, ()),
               ("decode static vs cache bf16", check_decode_bf16, ()), ("self-check", check_self_check, ()),
               ("decode speed (sampling)", check_decode_speed, ()), ("torchrun 2 processes", check_torchrun, ())]
    checks += sampling_checks()

    name = torch.cuda.get_device_name(args.device) if args.kind == "cuda" else platform.processor() or "cpu"
    print(f"gpu_check on {args.device} ({name}), torch {torch.__version__}"
          + (f", compute capability {capability(args.device)}, native bf16: {bf16}" if args.kind == "cuda" else ""))
    rows = []
    for label, fn, extra in checks:
        c = Check(label)
        t0 = time.perf_counter()
        try:
            fn(c, args, *extra)
        except Exception as e:  # a crash in a check is a FAIL with its reason, and the others still run
            c.need(False, f"{type(e).__name__}: {str(e).strip()[:300]}")
            traceback.print_exc(file=sys.stderr)
        c.figures["seconds"] = round(time.perf_counter() - t0, 1)
        figures = ", ".join(f"{k}={v}" for k, v in c.figures.items() if k != "failed")
        print(f"{'PASS' if c.ok else 'FAIL'}  {label:<30} {figures}", flush=True)
        for why in c.figures.get("failed", []):
            print(f"      {why}", flush=True)
        rows.append({"check": label, "pass": c.ok, **c.figures})
    if args.kind == "cpu":
        print("not run without a GPU: the CUDA-only tests, bf16/fp16 training on a GPU, NCCL")
    out = Path(args.out or ROOT / f"bench/results/gpu_check-{args.kind}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(args.device), "name": name, "torch": torch.__version__,
                               "native_bf16": bf16, "checks": rows}, indent=2))
    print(f"wrote {out}")
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
