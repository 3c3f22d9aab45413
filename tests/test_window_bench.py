"""A smoke run of bench/bench_window.py on a tiny model: it runs, its JSON holds every token's
time and every bucket, and its re-prefill marks are where model/generate.py re-prefills."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from model import GPT, GPTConfig
from model.generate import decode

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_window.py"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_window", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_writes_every_token_and_bucket(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "window.json"
    assert bench.main(["--quick", "--threads=1", "--static", f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    s = result["settings"]
    assert (s["block_size"], s["attn_window"], s["new_tokens"], s["bucket"]) == (32, 8, 128, 8)
    assert set(result["paths"]) == {"full", "window", "full-static", "window-static"}
    for name, r in result["paths"].items():
        assert len(r["seconds_per_token"]) == 128 and r["tok_per_s"] > 0
        assert bool(r["reprefill_tokens"]) == name.startswith("full")   # only full attention cuts
    assert len(result["rows"]) == 16 and [r["first"] for r in result["rows"][:2]] == [1, 9]
    assert "positions" in printed and "a re-prefill in this bucket" in printed and str(out) in printed


def test_reprefill_marks_follow_the_decode_policy():
    """The bench marks the tokens made right after a re-prefill; count the multi-token forwards
    model/generate.py really runs while decoding a full-attention model."""
    bench = load_bench()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=16, pos_emb="rope")).eval()
    sizes = []
    forward = model.forward
    model.forward = lambda idx, *a, **kw: sizes.append(idx.size(1)) or forward(idx, *a, **kw)
    list(decode(model, torch.zeros(1, 1, dtype=torch.long), 64, temperature=0))
    made_after = [i for i, n in enumerate(sizes) if n > 1]   # forward i makes token i (0: the prompt)
    assert bench.reprefills(1, 64, model.config) == made_after == [16, 25, 34, 43, 52, 61]  # every keep + 1


def test_bad_setting_is_one_clear_error(capsys):
    assert load_bench().main(["--quick", "--window=33"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: attn_window must be 0") and err.count("\n") == 1
