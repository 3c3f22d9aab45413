"""bench/speedrun.py end to end on a tiny config: runs train.py as a user types it, per config and
seed, and an external command in turn with it; headlines whole-process wall time, shows the
train-only clock beside it, measures each checkpoint's exact val loss, and writes JSON."""

import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_speedrun_bench_smoke(tmp_path):
    rng = random.Random(0)
    words = "the king queen lord shall thou art love death night day sweet fair my good".split()
    (tmp_path / "tiny.txt").write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(40))
                                                   for _ in range(200)))
    config = tmp_path / "tiny.toml"
    config.write_text(f'dataset = "{tmp_path / "tiny.txt"}"\ndata_root = "{tmp_path / "prepared"}"\n'
                      'device = "cpu"\ncompile = false\nn_layer = 1\nn_head = 2\nn_embd = 32\n'
                      'block_size = 32\nbatch_size = 8\nmax_iters = 40\neval_interval = 20\neval_iters = 4\n'
                      'warmup_iters = 5\nlearning_rate = 1e-2\ndropout = 0.0\nlog_interval = 1000\n')
    out = tmp_path / "result.json"
    # an "external recipe": a shell command that sleeps, prints a loss, and sees its {seed}
    fake = f'{sys.executable} -c "import time; time.sleep(0.5); print(\'step 9: val loss 2.{{seed}}500\')"'
    proc = subprocess.run([sys.executable, "bench/speedrun.py", "--configs", str(config),
                           "--external", f"other={fake}", "--target", "2.6", "--seeds", "0", "1",
                           "--out", str(out), "--optimizer=muon"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert [(r["name"], r["seed"]) for r in runs] == [(str(config), 0), ("other", 0), (str(config), 1), ("other", 1)]
    assert result["extra"] == ["--optimizer=muon"]
    ours, other = [r for r in runs if r["name"] == str(config)], [r for r in runs if r["name"] == "other"]
    for r in ours:
        assert r["steps"] == 40 and 0 < r["train_s"] < r["wall_s"] and r["val"] <= 2.6 and r["reached"]
        assert "--optimizer=muon" in r["command"] and f"--seed={r['seed']}" in r["command"]
    assert [r["val"] for r in other] == [2.05, 2.15] and all(r["wall_s"] >= 0.5 for r in other)
    assert ours[0]["val"] != ours[1]["val"]                           # the seed reached the run
    assert "less)" in proc.stdout and "reached 2/2" in proc.stdout
    # the t-test is one-sided, below the target: both runs under it give t < 0 and p < 0.5
    mine = result["summary"][str(config)]
    assert mine["t"] < 0 and 0 < mine["p"] < 0.5 and mine["val_max"] == max(r["val"] for r in ours)
    # the wall ratio pairs each seed's two runs
    ratio = mine["wall_ratio_vs_other"]
    assert ratio["per_seed"] == [a["wall_s"] / b["wall_s"] for a, b in zip(ours, other)]
    assert ratio["min"] <= ratio["mean"] <= ratio["max"]
