"""bench/gpu_check.py --device=cpu, as CI runs it: the checks that make sense without a GPU
all pass, one table row each, and the JSON says the same."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_subset_passes(tmp_path):
    out = tmp_path / "check.json"
    p = subprocess.run([sys.executable, "bench/gpu_check.py", "--device=cpu", "--quick", f"--out={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    rows = [line for line in p.stdout.splitlines() if line[:4] in ("PASS", "FAIL")]
    assert len(rows) == 9 and all(r.startswith("PASS") for r in rows), p.stdout
    checks = json.loads(out.read_text())["checks"]
    assert [c["check"] for c in checks] == ["train", "resume", "decode paths fp32", "decode static vs cache bf16",
                                            "self-check", "decode speed (sampling)", "torchrun 2 processes",
                                            "int8 static", "speculative greedy"]
    assert all(c["pass"] for c in checks)
    assert checks[1]["max_loss_diff"] == 0.0                 # resume is bit-exact on the CPU
