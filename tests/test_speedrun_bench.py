"""bench/speedrun.py end to end on a tiny config: runs train.py per config and seed, reads the
time-to-target from metrics.jsonl, prints a table and writes JSON."""

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
                      'block_size = 32\nbatch_size = 8\nmax_iters = 60\nlr_decay_iters = 60\n'
                      'warmup_iters = 5\nlearning_rate = 1e-2\ndropout = 0.0\n')
    twin = tmp_path / "twin.toml"  # the same settings under another name: a second "config"
    twin.write_text(config.read_text())
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "bench/speedrun.py", "--configs", str(config), str(twin),
                           "--target", "2.6", "--seeds", "0", "1", "--eval_interval", "10",
                           "--out", str(out), "--optimizer=muon"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert len(runs) == 4 and result["extra"] == ["--optimizer=muon"]
    for r in runs:
        assert r["reached"] and 0 < r["steps"] <= 60 and r["steps"] % 10 == 0
        assert r["best_val"] <= 2.6 and r["tokens"] == r["steps"] * 8 * 32 and r["train_s"] > 0
    assert runs[0]["steps"] == runs[2]["steps"]  # same settings and seed: the same run
    assert "reached 2/2" in proc.stdout and "sooner than" in proc.stdout
