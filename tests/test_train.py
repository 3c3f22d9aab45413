"""train.py: configs and their errors, a tiny run end to end, exact resume, Ctrl-C / SIGTERM,
a diverging loss, bad checkpoints, wandb offline, and DDP with two CPU processes (gloo)."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

import train
from conftest import help_groups
from training.config import MODEL_FIELDS, TrainConfig, load_settings
from training.optim import lr_scale, make_optimizers
from configs import available_configs, build, load_config_file
from model.checkpoint import load_checkpoint, model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small made-up text (60k characters) and a folder for its prepared form."""
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = "the king queen lord shall thou art love death night day sweet fair my good".split()
    text = "\n\n".join(" ".join(rng.choice(words) for _ in range(40)) for _ in range(300))
    (d / "tiny.txt").write_text(text)
    return d


def tiny(corpus, out_dir, *extra):
    """argv for a ~30k-parameter model that steps in milliseconds, on nanoGPT's CPU recipe (AdamW,
    cosine decay, an evaluation at the start) rather than the CPU default's speedrun recipe. A
    resume takes its settings from the checkpoint, so it names no config file."""
    config = [] if "--init_from=resume" in extra else ["cpu_tinyshakespeare"]
    return [*config, f"--dataset={corpus / 'tiny.txt'}", f"--data_root={corpus / 'prepared'}",
            f"--out_dir={out_dir}", "--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=32",
            "--block_size=32", "--batch_size=4", "--eval_interval=4", "--eval_iters=3",
            "--log_interval=1", "--max_iters=8", "--lr_decay_iters=8", "--warmup_iters=2", *extra]


def records(out_dir, kind):
    lines = (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def losses(out_dir):
    return [(r["iter"], r["loss"]) for r in records(out_dir, "train")]


# -----------------------------------------------------------------------------
# configuration

def test_shipped_configs_build():
    assert {"shakespeare_char", "cpu", "cpu_tinyshakespeare", "shakespeare", "shakespeare_bpe"} <= \
        set(available_configs())
    for name in available_configs():
        build(TrainConfig, load_config_file(TrainConfig, name))
    # the nanoGPT baseline, same settings so results compare
    c = build(TrainConfig, load_config_file(TrainConfig, "shakespeare_char"))
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.batch_size, c.dropout) == (6, 6, 384, 256, 64, 0.2)
    assert (c.learning_rate, c.warmup_iters, c.min_lr, c.decay_iters, c.max_iters, c.beta2) == \
        (1e-3, 100, 1e-4, 5000, 5000, 0.99)
    assert c.dataset == "tinyshakespeare" and c.tokenizer == "char"


def test_window_cpu_is_the_cpu_run_with_a_window():
    """configs/window_cpu.toml and `train.py cpu` differ in the window alone (and
    where they write): the same model size, data and budget, so their losses compare."""
    cpu = build(TrainConfig, load_config_file(TrainConfig, "cpu"))
    window = build(TrainConfig, load_config_file(TrainConfig, "window_cpu"))
    assert cpu.pos_emb == "rope" and replace(cpu, attn_window=16, out_dir="out-window-cpu") == window


def test_speedrun_cpu_is_the_cpu_recipe_on_tiny_shakespeare():
    """configs/speedrun_cpu.toml and configs/cpu.toml are one recipe: they differ in the data,
    the step count (and the settings that follow it) and how the one evaluation is taken."""
    cpu = build(TrainConfig, load_config_file(TrainConfig, "cpu"))
    run = build(TrainConfig, load_config_file(TrainConfig, "speedrun_cpu"))
    steps = run.max_iters
    assert replace(cpu, out_dir=run.out_dir, dataset="tinyshakespeare", max_iters=steps, eval_interval=steps,
                   muon_momentum_warmup=steps, eval_full_val=False) == run


def test_no_arguments_picks_a_config_for_the_machine(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU: configs/shakespeare.toml
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg, ckpt, origin = load_settings([])
    assert ckpt is None and "configs/shakespeare.toml" in origin and cfg.dropout == 0.2
    assert cfg == build(TrainConfig, load_config_file(TrainConfig, "shakespeare"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg, ckpt, origin = load_settings([])
    assert ckpt is None and "configs/cpu.toml" in origin
    assert cfg == build(TrainConfig, load_config_file(TrainConfig, "cpu"))
    cfg, _, _ = load_settings(["--n_layer=2"])  # the command line still wins
    assert cfg.n_layer == 2 and cfg.lr_decay_iters is None
    cfg, _, origin = load_settings(["shakespeare_char"])  # a named config is taken as is
    assert cfg.n_layer == 6 and "shakespeare_char" in origin


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key in ["out_dir", "dataset", "tokenizer", "device", "dtype", "compile", "seed", "batch_size",
                "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "dropout", "learning_rate",
                "max_iters", "warmup_iters", "lr_decay_iters", "min_lr", "weight_decay", "beta1", "beta2",
                "grad_clip", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval",
                "init_from", "wandb_log", "wandb_project", "wandb_run_name"]:
        assert f"--{key}=" in out, key


def test_help_lists_each_setting_once_under_a_heading(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        train.main(["--help"])
    out = capsys.readouterr().out
    groups = help_groups(out)
    assert list(groups) == ["model", "data", "optimizer and schedule", "evaluation and checkpoints",
                            "system", "logging"]
    assert groups["model"] == list(MODEL_FIELDS)  # every model setting, with model/config.py's help
    hidden = {f.name for f in fields(TrainConfig) if f.metadata.get("hidden")}
    assert hidden == {"data_root", "stop_at_val_loss"}  # what only tests and benchmarks set
    listed = [key for keys in groups.values() for key in keys]
    assert sorted(listed) == sorted(f.name for f in fields(TrainConfig) if f.name not in hidden)
    rows = [line for line in out.splitlines() if line.startswith("  --")]
    column = next(r for r in rows if r.startswith("  --n_layer=")).index("transformer blocks")
    for row in rows:  # each says what it does
        assert row[column:].split("[from ")[0].strip(), row
    assert not any(f"--{key}" in out for key in hidden)
    cfg, _, _ = load_settings(["--data_root=prepared-elsewhere", "--stop_at_val_loss=1.5"])  # still settable
    assert (cfg.data_root, cfg.stop_at_val_loss) == ("prepared-elsewhere", 1.5)


@pytest.mark.parametrize("gpu, argv, shown", [
    (False, [], ["--n_layer=4 ", "--max_iters=300 ", "--device=cpu ", "[from cpu.toml]"]),
    (True, [], ["--n_layer=6 ", "--max_iters=5000 ", "--device=auto "]),
    (False, ["shakespeare_char"], ["--n_layer=6 ", "--max_iters=5000 ", "[from shakespeare_char.toml]"]),
])
def test_help_shows_the_values_that_will_run(monkeypatch, capsys, gpu, argv, shown):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(gpu))
    with pytest.raises(SystemExit):
        train.main(argv + ["--help"])
    out = capsys.readouterr().out
    for s in shown:
        assert s in out, s
    if gpu:
        assert "[from cpu.toml]" not in out


@pytest.mark.parametrize("argv, words", [
    (["--learnig_rate=1e-3"], ["unknown key 'learnig_rate'", "did you mean learning_rate"]),
    (["--batch_size=big"], ["--batch_size must be an int"]),
    (["--device=gpu"], ["--device=gpu", "use auto, cpu, cuda, cuda:N or mps"]),
    (["--eval_interval=0"], ["eval_interval must be at least 1"]),
    (["--n_embd=30", "--n_head=4"], ["n_embd (30) must be divisible by n_head (4)"]),
    (["--device=cpu", "--dtype=float16"], ["float16 needs CUDA"]),
    (["--dataset=/nonexistent/text.txt"], ["/nonexistent/text.txt"]),
    (["--rope_base=nan"], ["--rope_base must be a finite number"]),
    (["--logit_softcap=nan"], ["--logit_softcap must be a finite number"]),
    (["--learning_rate=3e-5"], ["min_lr=0.0001 is above learning_rate=3e-05", "--min_lr=3e-06"]),
])
def test_config_mistakes_exit_1_with_one_clear_line(corpus, tmp_path, capsys, argv, words):
    argv = tiny(corpus, tmp_path / "out") + argv
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    for w in words:
        assert w in line


def test_device_cuda_without_a_gpu(monkeypatch, corpus, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.main(tiny(corpus, tmp_path / "out", "--device=cuda")) == 1
    assert "device=cuda but PyTorch sees no CUDA GPU" in capsys.readouterr().err


def test_lr_schedule():
    c = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110)
    lrs = [c.learning_rate * lr_scale(i, c) for i in range(130)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)   # warmup
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55)       # cosine
    assert lrs[110] == pytest.approx(0.1) and lrs[129] == 0.1                      # floor
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_scale(50, TrainConfig(decay_lr=False, learning_rate=0.3)) == 1.0


def test_weight_decay_only_on_matrices():
    from model import GPT, GPTConfig
    m = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, bias=True))
    opt, = make_optimizers(m, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


# -----------------------------------------------------------------------------
# a run, its files, and resuming it

def test_tiny_run_end_to_end(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert train.main(tiny(corpus, out)) == 0
    text = capsys.readouterr().out
    assert "device: cpu" in text and "done: 8 iterations" in text
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "last.pt", "loss.svg", "metrics.jsonl"]
    assert [r["iter"] for r in records(out, "train")] == list(range(8))
    assert [r["iter"] for r in records(out, "eval")] == [0, 4, 8]
    for r in records(out, "train"):
        assert set(r) == {"kind", "iter", "loss", "lr", "tok_per_s", "mfu"} and r["tok_per_s"] > 0
    last = load_checkpoint(out / "last.pt")  # weights_only=True
    for key in ["model", "model_config", "tokenizer", "config", "iter_num", "best_val_loss",
                "optimizer", "scaler", "rng", "format_version"]:
        assert key in last, key
    assert last["iter_num"] == 8 and last["config"]["n_layer"] == 2
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in last["model"])
    best = min(r["val_loss"] for r in records(out, "eval")[1:])
    assert load_checkpoint(out / "ckpt.pt")["best_val_loss"] == pytest.approx(best)
    model = model_from_checkpoint(last)  # what sample.py does
    assert model(torch.zeros(1, 4, dtype=torch.long))[0].shape == (1, 4, last["model_config"]["vocab_size"])
    # a second run into the same out_dir must not overwrite it
    assert train.main(tiny(corpus, out)) == 1
    assert "already holds a run" in capsys.readouterr().err


def test_a_runs_folder_is_never_overwritten_and_a_crash_without_last_pt_resumes(corpus, tmp_path, capsys):
    """always_save_checkpoint=false writes last.pt only at the end: a run that crashed before it
    left ckpt.pt and metrics.jsonl. A fresh run there is refused (it would delete both); a resume
    continues from ckpt.pt, its best, which holds the whole training state."""
    out = tmp_path / "out"
    args = tiny(corpus, out, "--dropout=0.1", "--gradient_accumulation_steps=2", "--always_save_checkpoint=false")
    assert train.main(args) == 0
    (out / "last.pt").unlink()                      # as if killed before the end
    kept = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert train.main(args) == 1
    assert "already holds a run (ckpt.pt, metrics.jsonl); continue it with --init_from=resume" in \
        capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == kept  # nothing touched
    assert train.main([f"--out_dir={out}", "--init_from=resume", "--max_iters=12"]) == 0
    said = capsys.readouterr().out
    assert f"resumed from {out / 'ckpt.pt'} (iteration " in said and "there is no last.pt" in said
    assert load_checkpoint(out / "last.pt")["iter_num"] == 12
    only_log = tmp_path / "log"
    only_log.mkdir()
    (only_log / "metrics.jsonl").write_text("")
    assert train.main(tiny(corpus, only_log)) == 1
    assert "already holds a run (metrics.jsonl)" in capsys.readouterr().err


def test_a_run_that_never_beats_step_0_still_leaves_ckpt_pt(corpus, tmp_path, capsys):
    """ckpt.pt is the best of the trained weights: written at the first eval after step 0 even
    when step 0's loss was lower (here the weights never move), so sample.py's default finds it."""
    import sample
    out = tmp_path / "out"
    assert train.main(tiny(corpus, out, "--learning_rate=0", "--max_iters=4")) == 0
    assert len({r["val_loss"] for r in records(out, "eval")}) == 1  # no eval beats step 0's
    assert load_checkpoint(out / "ckpt.pt")["iter_num"] == 4
    capsys.readouterr()
    assert sample.main([f"--out_dir={out}", "--max_new_tokens=5", "--device=cpu"]) == 0


def test_bpe_rope_gqa_run(corpus, tmp_path):
    """The other tokenizer and model options go through the same loop and checkpoint."""
    out = tmp_path / "out"
    assert train.main(tiny(corpus, out, "--tokenizer=bpe", "--tokenizer_vocab_size=300", "--pos_emb=rope",
                           "--n_kv_head=1", "--attn_impl=explicit", "--max_iters=2")) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["tokenizer"]["kind"] == "bpe" and ckpt["model_config"]["n_kv_head"] == 1
    assert model_from_checkpoint(ckpt).config.vocab_size == len(ckpt["tokenizer"]["ranks"])


def test_sliding_window_run_trains_resumes_and_samples(corpus, tmp_path, capsys):
    """--attn_window is a training setting: the model is built with it, a resumed run keeps it
    exactly (and refuses another window), and with RoPE the checkpoint samples far past
    block_size through the rolling cache, the same text as uncached."""
    import sample
    straight, out = tmp_path / "straight", tmp_path / "out"
    window = ["--attn_window=8", "--pos_emb=rope"]
    assert train.main(tiny(corpus, straight, *window)) == 0
    run = losses(straight)
    assert run[-1][1] < run[0][1]                                        # it learns
    assert train.main(tiny(corpus, out, *window, "--max_iters=3")) == 0
    capsys.readouterr()
    assert train.main([f"--out_dir={out}", "--init_from=resume", "--attn_window=4"]) == 1
    assert "trained with attn_window=8, but attn_window=4 was asked for" in capsys.readouterr().err
    assert train.main(tiny(corpus, out, "--init_from=resume")) == 0      # the window from the checkpoint
    assert losses(out) == run                                            # bit for bit
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["model_config"]["attn_window"] == 8 and ckpt["config"]["attn_window"] == 8
    capsys.readouterr()
    texts = []
    for flag in ("--use_cache=true", "--use_cache=false"):              # 3 x block_size + 4 new
        assert sample.main([f"--out_dir={out}", "--prompt=the king", "--max_new_tokens=100",
                            "--temperature=0", "--device=cpu", "--dtype=float32", flag]) == 0
        texts.append(capsys.readouterr())
    assert texts[0].out == texts[1].out and texts[0].out.startswith("the king")
    assert len(texts[0].out.split("\n---")[0]) == len("the king") + 100
    assert "decode: rolling KV cache" in texts[0].err


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
    """8 iterations in one go, with dropout and two micro-steps: the reference run."""
    out = tmp_path_factory.mktemp("straight") / "out"
    assert train.main(tiny(corpus, out, "--dropout=0.1", "--gradient_accumulation_steps=2")) == 0
    return out


def test_resume_continues_exactly(corpus, straight, tmp_path):
    out = tmp_path / "out"
    args = tiny(corpus, out, "--dropout=0.1", "--gradient_accumulation_steps=2")
    assert train.main(args + ["--max_iters=3"]) == 0     # stops at 3, mid-way between evals
    assert train.main(args + ["--init_from=resume"]) == 0
    assert losses(out) == losses(straight)               # bit for bit
    timeless = [{k: v for k, v in records(d, "eval")[-1].items() if k != "train_time"} for d in (out, straight)]
    assert timeless[0] == timeless[1]                    # wall-clock time is the only difference
    # and the resumed run's config came from the checkpoint: nothing else needs repeating
    assert train.main([f"--out_dir={out}", "--init_from=resume", "--max_iters=9"]) == 0
    assert load_checkpoint(out / "last.pt")["iter_num"] == 9


def test_resume_applies_the_optimizer_settings_it_is_given(corpus, tmp_path, capsys):
    """Every setting of a resumed run applies or is refused: new betas reach the restored AdamW
    (the checkpoint's groups would otherwise keep the old ones while the config says the new),
    Muon's momentum and decay reach Muon, and the optimizer and seed cannot change."""
    out = tmp_path / "out"
    assert train.main(tiny(corpus, out, "--optimizer=muon", "--max_iters=2")) == 0
    assert train.main([f"--out_dir={out}", "--init_from=resume", "--max_iters=3", "--beta1=0.5", "--beta2=0.9",
                       "--muon_momentum=0.8", "--muon_weight_decay=0.01", "--weight_decay=0.2"]) == 0
    ckpt = load_checkpoint(out / "last.pt")
    muon, adamw = ckpt["optimizer"]
    assert {tuple(g["betas"]) for g in adamw["param_groups"]} == {(0.5, 0.9)}
    assert [g["weight_decay"] for g in adamw["param_groups"]] == [0.2, 0.0]
    assert [(g["momentum"], g["weight_decay"]) for g in muon["param_groups"]] == [(0.8, 0.01)]
    assert (ckpt["config"]["beta1"], ckpt["config"]["muon_momentum"]) == (0.5, 0.8)
    capsys.readouterr()
    for change in ("--optimizer=adamw", "--seed=7"):
        assert train.main([f"--out_dir={out}", "--init_from=resume", "--max_iters=4", change]) == 1
        key = change[2:].split("=")[0]
        assert f"was trained with {key}=" in capsys.readouterr().err


def warnings_and_notes(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("warning:", "note:"))]


def test_resume_with_other_accumulation_says_the_data_does_not_continue_exactly(corpus, tmp_path, capsys):
    """The README promises an exact continuation; with another number of micro-batches a step
    (one data stream each) that cannot hold, and one warning says what happens instead."""
    out = tmp_path / "out"
    assert train.main(tiny(corpus, out, "--gradient_accumulation_steps=2", "--max_iters=3",
                           "--lr_decay_iters=none")) == 0
    capsys.readouterr()
    assert train.main([f"--out_dir={out}", "--init_from=resume", "--max_iters=4"]) == 0
    assert warnings_and_notes(capsys.readouterr().err) == []                   # the same: nothing to say
    assert train.main([f"--out_dir={out}", "--init_from=resume", "--max_iters=5",
                       "--gradient_accumulation_steps=3"]) == 0
    assert warnings_and_notes(capsys.readouterr().err) == [
        "warning: the checkpoint took 2 micro-batches a step (gradient_accumulation_steps, by default one "
        "per process), this run takes 3 micro-batches, one per data stream: streams 0-1 continue where the "
        "checkpoint left off, stream 2 starts fresh from its seed, so the run no longer continues exactly "
        "as an uninterrupted one would"]
    # a run with the default (one per process) written by 2 processes, resumed by one
    ckpt = load_checkpoint(out / "last.pt")
    ckpt["config"]["gradient_accumulation_steps"] = None
    ckpt["rng"]["per_rank"] *= 2
    torch.save(ckpt, out / "last.pt")
    assert train.main([f"--out_dir={out}", "--init_from=resume", "--max_iters=6"]) == 0
    captured = capsys.readouterr()
    assert warnings_and_notes(captured.err) == [
        "warning: the checkpoint took 2 micro-batches a step (gradient_accumulation_steps, by default one "
        "per process), this run takes 1 micro-batch, one per data stream: stream 0 continues where the "
        "checkpoint left off, stream 1 is no longer read, so the run no longer continues exactly as an "
        "uninterrupted one would"]
    assert warnings_and_notes(captured.out) == [
        "note: the checkpoint was written by 2 processes, this run has 1: dropout masks are reseeded"]


def test_resume_errors(corpus, straight, tmp_path, capsys):
    out = tmp_path / "out"
    assert train.main([f"--out_dir={out}", "--init_from=resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err
    out.mkdir()
    (out / "last.pt").write_bytes((straight / "last.pt").read_bytes()[:1000])  # truncated
    assert train.main([f"--out_dir={out}", "--init_from=resume"]) == 1
    assert "is not a readable checkpoint" in capsys.readouterr().err
    (out / "last.pt").write_bytes((straight / "last.pt").read_bytes())
    assert train.main([f"--out_dir={out}", "--init_from=resume", "--n_layer=3"]) == 1
    err = capsys.readouterr().err
    assert "trained with n_layer=2, but n_layer=3 was asked for" in err and "Traceback" not in err
    ckpt = load_checkpoint(straight / "last.pt")
    torch.save({k: ckpt[k] for k in ("format_version", "model", "model_config", "tokenizer")}, out / "last.pt")
    assert train.main([f"--out_dir={out}", "--init_from=resume"]) == 1
    assert "no training state" in capsys.readouterr().err


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert train.main(tiny(corpus, out, "--max_iters=4")) == 0
    good = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert train.main(tiny(corpus, out, "--init_from=resume", "--learning_rate=1e30",
                           "--grad_clip=0")) == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "at iteration 5" in err and "Traceback" not in err
    assert (out / "last.pt").read_bytes() == good
    assert records(out, "train")[-1]["iter"] == 4  # the bad step was not logged either


def logged_steps(out_dir) -> int:
    metrics = Path(out_dir) / "metrics.jsonl"
    return metrics.read_text().count('"train"') if metrics.exists() else 0


def test_sigterm_saves_last_pt_and_resume_matches(corpus, straight, tmp_path):
    """A real process, a real SIGTERM mid-run; then resume to the end: same losses as straight."""
    out = tmp_path / "out"
    args = tiny(corpus, out, "--dropout=0.1", "--gradient_accumulation_steps=2")
    endless = [a for a in args if not a.startswith("--max_iters")] + ["--max_iters=100000"]
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *endless], cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while logged_steps(out) < 2:
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline, "no training steps logged within 60 s"
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and f"saved {out / 'last.pt'}" in stdout
    assert load_checkpoint(out / "last.pt")["iter_num"] >= 2
    assert train.main(args + ["--init_from=resume"]) == 0
    assert losses(out) == losses(straight)


def test_ctrl_c_saves_last_pt(corpus, straight, tmp_path, capsys):
    """Ctrl-C (SIGINT to this process, from a watcher thread) stops after the step and saves."""
    out = tmp_path / "out"
    args = tiny(corpus, out, "--dropout=0.1", "--gradient_accumulation_steps=2")

    def press_ctrl_c():
        deadline = time.time() + 60
        while logged_steps(out) < 3 and time.time() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=press_ctrl_c)
    watcher.start()
    code = train.main([a for a in args if not a.startswith("--max_iters")] + ["--max_iters=100000"])
    watcher.join()
    assert code == 130
    assert "stopped at iteration" in capsys.readouterr().out
    n = load_checkpoint(out / "last.pt")["iter_num"]
    assert n >= 3 and len(losses(out)) == n
    assert train.main(args + ["--init_from=resume"]) == 0
    assert losses(out) == losses(straight)


# -----------------------------------------------------------------------------
# logging and scale-out

def test_wandb_offline(corpus, tmp_path, monkeypatch):
    """WANDB_MODE=offline: no network needed, and the metrics land in the offline run."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert train.main(tiny(corpus, tmp_path / "out", "--wandb_log", "--max_iters=4")) == 0
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    deadline = time.time() + 30  # wandb's service writes the file in the background
    while b"eval/val_loss" not in runs[0].read_bytes() and time.time() < deadline:
        time.sleep(0.1)
    data = runs[0].read_bytes()
    assert b"train/loss" in data and b"eval/val_loss" in data and b"tok_per_s" in data


def test_wandb_failure_never_stops_training(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    assert train.main(tiny(corpus, tmp_path / "a", "--wandb_log", "--max_iters=2")) == 0
    assert "wandb is not installed" in capsys.readouterr().err


def test_ddp_two_processes_match_one_with_twice_the_accumulation(corpus, tmp_path):
    """torchrun --nproc_per_node=2 with gloo and the default gradient_accumulation_steps (one
    micro-step per process) against one process with gas=2: the same batches, so the same
    losses up to float rounding. MFU counts a step's tokens (every process's) against the peak
    of all the devices that computed them."""
    one, two = tmp_path / "one", tmp_path / "two"
    peak = "--peak_flops=1e9"
    assert train.main(tiny(corpus, one, "--gradient_accumulation_steps=2", "--max_iters=4", peak)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as torchrun would set
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "train.py"), *tiny(corpus, two, "--max_iters=4", peak)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes" in r.stdout and "(2 x 4 x 32)" in r.stdout
    assert len(losses(two)) == 4
    for (i, a), (j, b) in zip(losses(one), losses(two)):
        assert i == j and a == pytest.approx(b, abs=1e-5)
    for a, b in zip(records(one, "eval"), records(two, "eval")):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    assert load_checkpoint(two / "last.pt")["iter_num"] == 4
    flops = model_from_checkpoint(load_checkpoint(two / "last.pt")).flops_per_token(32)
    for out, devices in ((one, 1), (two, 2)):
        for r in records(out, "train"):
            assert r["mfu"] == pytest.approx(r["tok_per_s"] * flops / (devices * 1e9), rel=1e-9)


@pytest.mark.slow
def test_ddp_around_a_compiled_model_trains_and_resumes_exactly(corpus, tmp_path):
    """torchrun --nproc_per_node=2 with gloo and --compile=true: DDP around a torch.compile'd
    model, two micro-batches per process (the first under no_sync), dropout on. 2 steps then
    --init_from=resume for 2 more give the very losses of 4 steps in one go. The three runs share
    one Inductor cache, so only the first compiles from cold."""
    small = ["--n_layer=1", "--n_embd=16", "--block_size=16", "--batch_size=2", "--eval_iters=1",
             "--eval_interval=100", "--eval_at_start=false", "--lr_decay_iters=4", "--warmup_iters=1",
             "--compile=true", "--gradient_accumulation_steps=4", "--dropout=0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}

    def torchrun(out, *extra):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            str(ROOT / "train.py"), *tiny(corpus, out, *small, *extra)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        # a compiled 2-process CPU run sometimes aborts (docs/training.md, known problem): one that
        # aborts after "done:" has written what this test checks
        finished = "done: " in r.stdout and "SIGABRT" in r.stderr
        assert r.returncode == 0 or finished, r.stderr[-3000:]
        assert "compile: True, 2 processes" in r.stdout and "(4 x 2 x 16)" in r.stdout

    straight, halves = tmp_path / "straight", tmp_path / "halves"
    torchrun(straight, "--max_iters=4")
    torchrun(halves, "--max_iters=2")
    torchrun(halves, "--init_from=resume", "--max_iters=4")
    assert losses(halves) == losses(straight) and len(losses(straight)) == 4
    assert losses(straight)[-1][1] < losses(straight)[0][1]


@pytest.mark.parametrize("case", ["preparation", "checkpoint"])
def test_an_error_only_rank_0_sees_stops_every_rank_at_once(corpus, tmp_path, case):
    """Two processes started as two nodes would start them (no torchrun to kill the other when
    one fails): rank 0 alone prepares the data and writes the files, so where that fails (a
    folder with no text in it; a checkpoint that cannot be written) rank 1 must stop too, with
    the same error, rather than wait at the next collective for the process group's timeout."""
    # the rendezvous store lives outside the ranks, as torchrun's agents host it on a real cluster:
    # a rank that stops then takes nothing down with it that the other still needs to exit cleanly
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    args = tiny(corpus, tmp_path / "out", "--max_iters=4")
    if case == "preparation":
        (tmp_path / "empty").mkdir()
        args.append(f"--dataset={tmp_path / 'empty'}")
        said = "has no .txt files"
    else:  # ckpt.pt's name is taken by a folder: rank 0's write fails at the first eval after step 0
        (tmp_path / "out" / "ckpt.pt").mkdir(parents=True)
        said = "it is a folder"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [1, 1], outs
    assert said in outs[0][1] and "Traceback" not in outs[0][1] + outs[1][1]
