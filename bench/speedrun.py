r"""The speedrun as a user lives it: whole-process wall time to a checkpoint at a target val loss,
side by side with other recipes, over seeds.

    python bench/speedrun.py --configs cpu_tinyshakespeare speedrun_cpu --seeds 0 1 2 \
        --target 1.8857 --data_source=path/to/tinyshakespeare.txt \
        --external nanogpt="cd ../nanoGPT && python train.py config/train_shakespeare_char.py \
            --device=cpu --compile=False --seed={seed} --out_dir=$TMPDIR/out ..." \
        --external_loss='val loss (\d+\.\d+)'

Each of our configs runs exactly as a user types it, `python train.py CONFIG [--data_source=...]`,
plus --seed and a fresh --out_dir (and anything after the bench's own options), as a fresh
process; each --external command runs through the shell, in turn with ours, with {seed}
replaced. For every run the table shows:
  wall s     launch to exit, the whole process (start-up, data, compilation, evals, saving)
  train s    our runs only: train.py's own clock, the optimizer steps alone
  val        our runs: the exact loss of the run's ckpt.pt over the whole val split, measured here
             after the run (not timed); external runs: the last --external_loss match in its output
It prints one table and the mean wall time of each entry; with --target, for each of our configs,
a one-sided t-test (scipy.stats.ttest_1samp) that its mean val is below the target, as
modded-nanogpt asks of a record; against each external recipe the wall-time ratio seed by seed
(the two runs of a seed are neighbours in time), its mean and spread. Then it writes it all as
JSON. It asserts nothing. Nothing of any external project is part of this one: bring your own checkout.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scipy.stats import ttest_1samp  # noqa: E402

from training.evaluate import exact_val_loss  # noqa: E402
from viz.metrics import read_records  # noqa: E402


def run_ours(config: str, seed: int, args, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="speedrun-") as tmp:
        out = Path(tmp, "out")
        argv = [config, f"--seed={seed}", f"--out_dir={out}"]
        argv += [f"--data_source={args.data_source}"] if args.data_source else []
        argv += extra
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT,
                              capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"error: python train.py {' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
        records = read_records(out / "metrics.jsonl")[0]
        evals = [r for r in records if r["kind"] == "eval"]
        warmup = next((r["seconds"] for r in records if r["kind"] == "warmup"), None)
        val = exact_val_loss(out, "ckpt.pt")
    return {"name": config, "seed": seed, "command": f"python train.py {' '.join(argv)}", "wall_s": wall,
            "train_s": evals[-1]["train_time"] if evals else None, "warmup_s": warmup,
            "steps": evals[-1]["iter"] if evals else None, "val": val}


def run_external(name: str, command: str, seed: int, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="speedrun-ext-") as tmp:
        command = command.replace("{seed}", str(seed))
        started = time.perf_counter()
        proc = subprocess.run(command, shell=True, capture_output=True, text=True,
                              env={**os.environ, "TMPDIR": tmp})
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"error: {name} ({command}) failed:\n{proc.stderr[-2000:]}")
    found = re.findall(args.external_loss, proc.stdout + proc.stderr)
    return {"name": name, "seed": seed, "command": command, "wall_s": wall, "train_s": None,
            "warmup_s": None, "steps": None, "val": float(found[-1]) if found else None}


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="*", default=[], help="our config names (configs/NAME.toml)")
    p.add_argument("--external", action="append", default=[], metavar='NAME="COMMAND"',
                   help="another recipe to time in turn with ours, run by the shell; {seed} is replaced")
    p.add_argument("--external_loss", default=r"val loss (\d+\.\d+)",
                   help="regex whose last match in an external run's output is its final val loss")
    p.add_argument("--target", type=float, default=None, help="val loss a run must reach (<=)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data_source", default=None, help="local copy of the dataset's text, for our configs")
    p.add_argument("--out", default="bench/results/speedrun.json")
    args, extra = p.parse_known_args()  # anything else goes to every train.py run
    externals = []
    for e in args.external:
        name, eq, command = e.partition("=")
        if not eq or not command:
            raise SystemExit(f'error: --external {e!r}: write NAME="COMMAND"')
        externals.append((name, command))
    if not args.configs and not externals:
        raise SystemExit("error: nothing to run: give --configs and/or --external")

    rows = []
    print(f"{'run':<22} {'seed':>4} {'wall s':>7} {'train s':>8} {'warm-up s':>9} {'steps':>6} "
          f"{'val':>7} {'reached':>7}", flush=True)
    for seed in args.seeds:  # seed by seed, every entry in turn: slow drifts hit all alike
        for name in args.configs + [n for n, _ in externals]:
            r = run_ours(name, seed, args, extra) if name in args.configs else \
                run_external(name, dict(externals)[name], seed, args)
            r["reached"] = None if args.target is None or r["val"] is None else r["val"] <= args.target
            rows.append(r)
            print(f"{name:<22} {seed:>4} {r['wall_s']:7.1f} {fmt(r['train_s'], '8.1f')} "
                  f"{fmt(r['warmup_s'], '9.2f')} {fmt(r['steps'], '6d')} {fmt(r['val'], '7.4f')} "
                  f"{({True: 'yes', False: 'no', None: '-'})[r['reached']]:>7}", flush=True)

    summary, vals_of = {}, {}
    print("\nwhole-process wall time, mean ± stdev over seeds (train-only clock beside it, ours only)")
    for name in args.configs + [n for n, _ in externals]:
        mine = [r for r in rows if r["name"] == name]
        walls = [r["wall_s"] for r in mine]
        trains = [r["train_s"] for r in mine if r["train_s"] is not None]
        s = {"wall_s": statistics.mean(walls), "wall_stdev": statistics.stdev(walls) if len(walls) > 1 else 0.0,
             "train_s": statistics.mean(trains) if trains else None,
             "reached": sum(bool(r["reached"]) for r in mine), "runs": len(mine)}
        vals = vals_of[name] = [r["val"] for r in mine if r["val"] is not None]
        if vals:
            s.update(val_mean=statistics.mean(vals), val_max=max(vals))
        summary[name] = s
        print(f"  {name:<22} {s['wall_s']:6.1f} s ± {s['wall_stdev']:.1f}"
              + (f"   (train {s['train_s']:.1f} s)" if s["train_s"] is not None else "")
              + (f"   val mean {s['val_mean']:.4f}, max {s['val_max']:.4f}" if vals else "")
              + (f"   reached {s['reached']}/{s['runs']}" if args.target is not None else ""))
    if args.target is not None:
        for name in args.configs:
            vals = vals_of[name]
            if len(vals) > 1:
                t = ttest_1samp(vals, args.target, alternative="less")
                summary[name].update(t=float(t.statistic), p=float(t.pvalue))
                print(f"  {name}: mean val below {args.target} by a one-sided t-test over {len(vals)} "
                      f"seeds: t = {t.statistic:.2f}, p = {t.pvalue:.2g}")
    # each of our configs against each external recipe, or against the first config if none;
    # the ratio of each seed's pair of runs, then their mean and spread
    wall = {(r["name"], r["seed"]): r["wall_s"] for r in rows}
    for ref in [n for n, _ in externals] or args.configs[:1]:
        for name in args.configs:
            if name != ref:
                ratios = [wall[name, seed] / wall[ref, seed] for seed in args.seeds]
                spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
                summary[name][f"wall_ratio_vs_{ref}"] = {"per_seed": ratios, "mean": statistics.mean(ratios),
                                                        "stdev": spread, "min": min(ratios), "max": max(ratios)}
                print(f"  {name} / {ref} wall time, seed by seed: {statistics.mean(ratios):.3f} ± {spread:.3f} "
                      f"(min {min(ratios):.3f}, max {max(ratios):.3f}; {1 / statistics.mean(ratios):.2f}x less)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"target": args.target, "extra": extra, "runs": rows, "summary": summary,
                               "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
