"""Time-to-target: train configs until their val loss first reaches a target, side by side.

    python bench/speedrun.py --configs cpu_tinyshakespeare speedrun_cpu --target 1.8857 \
        --seeds 0 1 2 --data_source=path/to/tinyshakespeare.txt

Every run is a fresh `python train.py CONFIG` process with the same measuring settings forced
on all configs alike: val loss from one exact pass over the whole val split (eval_full_val),
an eval every --eval_interval steps, and a stop as soon as the target is reached. The clock is
train.py's own: synchronised time of the optimizer steps only (no eval, no checkpointing), with
the first step (torch.compile, allocator warm-up) reported apart as "warm-up"; "run s" is the
training time of the whole run (up to the target, or to max_iters if it never got there). Prints one table
and writes it as JSON; asserts nothing about speed.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import build, load_config_file, read_args  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.runlog import read_records  # noqa: E402


def run_one(config: str, seed: int, args, extra: list[str]) -> dict:
    """Train one config with one seed to the target; the numbers from its metrics.jsonl."""
    with tempfile.TemporaryDirectory(prefix="speedrun-") as tmp:
        argv = [config, f"--out_dir={tmp}/out", f"--seed={seed}", "--eval_full_val=true",
                f"--stop_at_val_loss={args.target}", f"--eval_interval={args.eval_interval}",
                "--always_save_checkpoint=false", "--wandb_log=false", "--log_interval=1000000"]
        if args.data_source:
            argv.append(f"--data_source={args.data_source}")
        argv += extra
        started = time.time()
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT,
                              capture_output=True, text=True)
        wall = time.time() - started
        if proc.returncode != 0:
            raise SystemExit(f"error: train.py {' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
        records = read_records(Path(tmp, "out", "metrics.jsonl"))[0]
    path, values = read_args(TrainConfig, argv, prog="train.py", description="")
    cfg = build(TrainConfig, {**load_config_file(TrainConfig, str(path)), **values})
    tokens_per_step = cfg.batch_size * cfg.block_size * (cfg.gradient_accumulation_steps or 1)
    evals = [r for r in records if r["kind"] == "eval"]
    hit = next((r for r in evals if r["val_loss"] <= args.target), None)
    warmup = next((r["seconds"] for r in records if r["kind"] == "warmup"), None)
    return {"config": config, "seed": seed, "reached": hit is not None,
            "train_s": hit["train_time"] if hit else None, "steps": hit["iter"] if hit else None,
            "tokens": hit["iter"] * tokens_per_step if hit else None,
            "best_val": min(r["val_loss"] for r in evals), "last_step": evals[-1]["iter"],
            "last_train_s": evals[-1]["train_time"], "warmup_s": warmup, "wall_s": wall}


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", required=True, help="config names (configs/NAME.toml)")
    p.add_argument("--target", type=float, required=True, help="val loss to reach")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--eval_interval", type=int, default=50, help="steps between (full) evals, all configs")
    p.add_argument("--data_source", default=None, help="local copy of the dataset's text, if needed")
    p.add_argument("--out", default="bench/results/speedrun.json")
    args, extra = p.parse_known_args()  # anything else goes to every train.py run (--device=cpu ...)

    rows = []
    print(f"{'config':<22} {'seed':>4} {'reached':>7} {'train s':>8} {'steps':>6} {'tokens':>10} "
          f"{'best val':>8} {'warm-up s':>9} {'run s':>7}", flush=True)
    for config in args.configs:
        for seed in args.seeds:
            r = run_one(config, seed, args, extra)
            rows.append(r)
            print(f"{config:<22} {seed:>4} {str(r['reached']):>7} {fmt(r['train_s'], '8.1f')} "
                  f"{fmt(r['steps'], '6d')} {fmt(r['tokens'], '10,d')} {r['best_val']:8.4f} "
                  f"{fmt(r['warmup_s'], '9.2f')} {r['last_train_s']:7.1f}", flush=True)

    summary = {}
    print(f"\ntarget val loss {args.target}: time to reach it (mean ± spread over seeds)")
    for config in args.configs:
        times = [r["train_s"] for r in rows if r["config"] == config and r["reached"]]
        n = sum(r["config"] == config for r in rows)
        mean = statistics.mean(times) if times else None
        spread = statistics.stdev(times) if len(times) > 1 else 0.0
        summary[config] = {"reached": f"{len(times)}/{n}", "mean_s": mean, "stdev_s": spread if times else None}
        full = statistics.mean(r["last_train_s"] for r in rows if r["config"] == config)
        summary[config]["full_run_s"] = full
        print(f"  {config:<22} reached {len(times)}/{n}: "
              + (f"{mean:.1f} s ± {spread:.1f}" if times else
                 f"never: best val {min(r['best_val'] for r in rows if r['config'] == config):.4f} "
                 f"after a full run of {full:.1f} s"))
    base, fast = args.configs[0], args.configs[-1]
    if len(args.configs) > 1 and summary[fast]["mean_s"]:
        if summary[base]["mean_s"]:
            ratio = summary[base]["mean_s"] / summary[fast]["mean_s"]
            print(f"  {fast} reaches it {ratio:.1f}x sooner than {base}")
        else:  # the baseline never got there: its whole run is a lower bound on its time
            ratio = summary[base]["full_run_s"] / summary[fast]["mean_s"]
            print(f"  {fast} reaches it more than {ratio:.1f}x sooner than {base} "
                  f"(which did not reach it in its whole run)")
        summary["speedup"] = ratio
        summary["speedup_is_lower_bound"] = not summary[base]["mean_s"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"target": args.target, "eval_interval": args.eval_interval,
                               "extra": extra, "runs": rows, "summary": summary}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
