"""python -m lab: every experiment's --quick run writes its JSON and SVG with the arms it promises,
and what its figures show at that size, where it is robust (fixed seeds, wide margins), is checked:
the ablations really change the model, and the effect each one is about is really measured."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab import EXPERIMENTS
from lab.__main__ import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick(one_thread, tmp_path_factory):
    """name -> the figures of its --quick run, each experiment run once (in this process)."""
    done = {}

    def get(name):
        if name not in done:
            out = tmp_path_factory.mktemp(name)
            assert main([name, "--quick", "--out", str(out)]) == 0
            svg = ET.parse(out / f"{name}.svg").getroot()       # well-formed XML, or this raises
            assert svg.tag == "{http://www.w3.org/2000/svg}svg"
            record = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
            assert record["experiment"] == name and record["quick"] and record["shows"]
            assert len(record["table"]["rows"]) >= 1
            done[name] = record["figures"]
        return done[name]
    return get


def test_the_listing_names_every_experiment_then_its_question():
    out = subprocess.run([sys.executable, "-m", "lab"], cwd=REPO, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) >= 7 and len(lines) == len(EXPERIMENTS)
    for line, name in zip(lines, EXPERIMENTS):
        first, question = line.split(maxsplit=1)
        assert first == name and question.endswith("?")


def test_a_run_from_the_command_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lab", "kv-heads", "--quick", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "1 thread(s)" in out.stdout and "\nshows: " in out.stdout
    assert (tmp_path / "kv-heads.json").is_file() and (tmp_path / "kv-heads.svg").is_file()


def one_error_line(capsys, out=None):
    """The captured stderr, checked to be one "error:" line; and stdout, if given, to be that."""
    got = capsys.readouterr()
    assert got.err.startswith("error: ") and got.err.count("\n") == 1, got.err
    assert out is None or got.out == out, got.out
    return got.err


def test_mistakes_are_one_error_line(tmp_path, capsys):
    assert main(["nope"]) == 2
    assert "scale" in one_error_line(capsys)               # it names the experiments there are
    for argv in (["mask", "--bogus"], ["mask", "--threads", "0"], ["mask", "--threads", "x"]):
        with pytest.raises(SystemExit) as stop:   # argparse's mistakes exit from the parser
            main(argv)
        assert stop.value.code == 2
        one_error_line(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["mask", "--quick", "--out", str(blocker / "sub")]) == 1
    assert "--out" in one_error_line(capsys, out="")       # found before anything started


def test_scale_sharper_without_scaling(quick):
    fig = quick("scale")
    own, none, width = fig["1/sqrt(head_size)"], fig["none"], fig["1/sqrt(n_embd)"]
    # the same weights: a larger scale can only make every softmax row sharper
    assert none["entropy_init"][0] < own["entropy_init"][0] < width["entropy_init"][0]
    assert own["entropy_init"][0] > 0.9 * fig["uniform_entropy"]        # the small init: near uniform
    assert none["entropy_end"][0] < own["entropy_end"][0] - 0.2         # trained: no scaling goes one-hot


def test_mask_training_loss_lies(quick):
    fig = quick("mask")
    nm, causal = fig["no mask"], fig["causal"]
    assert nm["train_loss"][0] < nm["val_loss_causal"][0] - 2.0          # it reads the answer in training
    assert nm["val_loss_causal"][0] > causal["val_loss_causal"][0] + 1.0  # and cannot write text
    assert set(fig["samples"]) == {"causal", "no mask"}
    assert all(s.startswith("DUKE ORSINO:") for s in fig["samples"].values())


def test_qkv_three_projections_win(quick):
    fig = quick("qkv")
    assert set(fig) == {"three", "shared", "none"}
    assert fig["shared"]["qkv_params"] * 3 == fig["three"]["qkv_params"] and fig["none"]["qkv_params"] == 0
    for other in ("shared", "none"):
        assert fig["three"]["val_loss"][0] < fig[other]["val_loss"][0] - 0.05


def test_heads_same_width_every_count(quick):
    fig = quick("heads")
    assert [f["n_head"] for f in fig.values()] == [1, 2, 4, 8, 16]
    assert [f["head_size"] * f["n_head"] for f in fig.values()] == [32] * 5
    assert len({f["params"] for f in fig.values()}) == 1
    assert all(f["ms_per_step"][0] > 0 for f in fig.values())


def test_head_importance_heads_differ(quick):
    seeds = quick("head-importance")["seeds"]
    s = seeds["0"]
    assert len(s["importance"]) == 1 and len(s["importance"][0]) == 4   # n_layer x n_head
    assert max(s["importance"][0]) > 0.05                               # silencing a head costs
    assert s["divergence_end"][0] > 10 * s["divergence_init"][0]        # trained heads look elsewhere


def test_kv_heads_cache_shrinks(quick):
    fig = quick("kv-heads")
    assert [f["n_kv_head"] for f in fig.values()] == [4, 2, 1]
    assert [f["cache_bytes_per_token"] for f in fig.values()] == [256, 128, 64]
    params = [f["params"] for f in fig.values()]
    assert params == sorted(params, reverse=True) and len(set(params)) == 3


def test_window_of_one_costs(quick):
    fig = quick("window")
    assert [f["attn_window"] for f in fig.values()] == [32, 8, 4, 2, 1]
    assert fig["window 1"]["val_loss"][0] > fig["window 32 (full)"]["val_loss"][0] + 0.05
