"""The training plumbing (training/ and train.py's pieces), checked on the CPU: no host sync per
step, fp16 with the GradScaler, the exact full-val pass, the schedule that follows the run, the
divergence watch, and the files a run writes."""

import json
import os
import random
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import train
from common.errors import UserError
from common.files import atomic_write, clean_stale_temp_files, temp_name
from configs import build
from model import load_run
from model.checkpoint import load_checkpoint
from training.config import TrainConfig, load_settings
from training.env import Phases, RunEnv, start_env
from training.evaluate import ValWindows
from training.optim import lr_scale, schedule_warnings
from training.state import train_streams
from training.stops import DivergenceWatch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(1)
    words = "to be or not that is the question whether tis nobler in mind".split()
    (d / "tiny.txt").write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(40)) for _ in range(300)))
    return d


def settings(corpus, out_dir, **over):
    values = dict(dataset=str(corpus / "tiny.txt"), data_root=str(corpus / "prepared"), out_dir=str(out_dir),
                  device="cpu", n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, eval_interval=4,
                  eval_iters=3, log_interval=1, max_iters=8, warmup_iters=2, compile=False)
    return build(TrainConfig, {**values, **over})


def argv(cfg: TrainConfig) -> list[str]:
    return [f"--{k}={'none' if v is None else v}" for k, v in vars(cfg).items()]


# -----------------------------------------------------------------------------
# no host sync per step: what lets the CPU queue work ahead of a GPU

class HostReads(TorchDispatchMode):
    """Records every op that reads a tensor's value back to the host (on a GPU: a sync)."""
    SYNCS = ("_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal", "multinomial")

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.SYNCS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def fused_adamw(monkeypatch):
    """AdamW as a CUDA run builds it (fused). The CPU default (for-loop) AdamW reads each step
    counter back, which costs nothing there: PyTorch keeps those counters on the CPU on purpose."""
    adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: adamw(*a, **{**k, "fused": True}))


@pytest.mark.parametrize("extra", [{}, {"optimizer": "muon", "gradient_accumulation_steps": 3, "grad_clip": 1.0},
                                   {"data_on_device": True, "dropout": 0.1}])
def test_a_training_step_reads_nothing_back(corpus, tmp_path, fused_adamw, extra):
    cfg = settings(corpus, tmp_path / "out", **extra)
    env = start_env(cfg)
    run = train.setup(cfg, None, env, Phases())
    params, watch = list(run.raw_model.parameters()), DivergenceWatch(env.device)
    with HostReads() as mode:
        for it in range(3):
            loss = train.train_step(run, cfg, env, params)
            watch.update(loss, it)
    assert mode.reads == []
    assert watch.check(env) is None and torch.isfinite(loss)


def test_host_reads_do_not_grow_with_the_number_of_steps(corpus, tmp_path, fused_adamw):
    """Whole runs: the loss is read at log lines and evals only, so 24 steps read back as often
    as 6 when both log and evaluate at the same steps (the first and the last)."""
    counts = []
    for n in (6, 24):
        cfg = settings(corpus, tmp_path / f"out{n}", max_iters=n, log_interval=1000, eval_interval=1000)
        with HostReads() as mode:
            assert train.main(argv(cfg)) == 0
        counts.append(len(mode.reads))
    assert counts[0] == counts[1]


def test_a_diverging_loss_is_noticed_on_the_device():
    env = RunEnv(torch.device("cpu"), torch.float32, False)
    watch = DivergenceWatch(env.device)
    for it, loss in enumerate([2.0, 1.5, float("nan"), 1.0, float("inf")]):
        watch.update(torch.tensor(loss), it)
    assert watch.check(env) == 2  # the first bad one


# -----------------------------------------------------------------------------
# fp16 with the GradScaler, as on a GPU without native bf16 (T4, V100)

def test_float16_with_the_grad_scaler_trains_and_skips_an_overflowing_step(corpus, tmp_path):
    cfg = settings(corpus, tmp_path / "out", learning_rate=3e-3)
    env = RunEnv(torch.device("cpu"), torch.float16, False)  # start_env refuses fp16 off CUDA
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.ones(2, 2) @ torch.ones(2, 2)
    except RuntimeError as e:
        pytest.skip(f"this torch has no float16 autocast on the CPU: {e}")
    run = train.setup(cfg, None, env, Phases())
    assert run.scaler.is_enabled()
    params = list(run.raw_model.parameters())
    losses = [train.train_step(run, cfg, env, params).item() for _ in range(30)]
    assert sum(losses[-5:]) < sum(losses[:5])
    # a scale so large that the fp16 gradients overflow: the update is skipped, the scale backs off
    run.scaler.update(2.0 ** 100)
    before = [p.detach().clone() for p in params]
    train.train_step(run, cfg, env, params)
    assert all(torch.equal(a, p) for a, p in zip(before, params))
    assert run.scaler.get_scale() == 2.0 ** 99


def test_a_run_resumes_in_float16_from_float32_and_back(corpus, tmp_path, capsys):
    """dtype=auto is float16 on a T4 or V100, bf16 on an A100, float32 on a CPU: a checkpoint
    written without float16 holds an empty GradScaler state, which an enabled scaler refuses."""
    out = tmp_path / "out"
    assert train.main(argv(settings(corpus, out, max_iters=4))) == 0  # float32: no scaler state
    cfg, ckpt, _ = load_settings([f"--out_dir={out}", "--init_from=resume", "--max_iters=8"])
    fp16 = RunEnv(torch.device("cpu"), torch.float16, False)  # start_env refuses fp16 off CUDA
    capsys.readouterr()
    run = train.setup(cfg, ckpt, fp16, Phases())
    assert run.scaler.is_enabled() and run.state.iter_num == 4
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "GradScaler starts fresh" in notes[0]
    # and back: a float16 checkpoint (with a scaler state) resumed in float32
    run.checkpoints.save(["last.pt"], run.state, None)
    assert load_checkpoint(out / "last.pt")["scaler"]
    assert train.main([f"--out_dir={out}", "--init_from=resume", "--max_iters=6"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == ["note: the checkpoint was trained in float16 and this run computes in float32, which "
                     "needs no GradScaler: the checkpoint's is dropped"]
    assert load_checkpoint(out / "last.pt")["iter_num"] == 6


def test_resident_data_is_one_copy_per_process_shared_by_its_streams(corpus, tmp_path):
    """data_on_device with 3 micro-batches a step: one int64 copy of the train split on the
    device, not three, and every stream still draws the batches it draws from the file."""
    cfg = settings(corpus, tmp_path / "out", data_on_device=True, gradient_accumulation_steps=3)
    env = start_env(cfg)
    data_dir = train.prepare_data(cfg, env)
    resident = train_streams(data_dir, cfg, env, range(3))
    mapped = train_streams(data_dir, replace(cfg, data_on_device=False), env, range(3))
    assert len({loader.tokens.untyped_storage().data_ptr() for loader in resident.values()}) == 1
    assert all(loader.tokens is None for loader in mapped.values())
    for k in range(3):
        for _ in range(3):
            assert all(torch.equal(a, b) for a, b in zip(resident[k].next_batch(), mapped[k].next_batch()))


# -----------------------------------------------------------------------------
# evaluation

def test_full_val_batches_keep_one_shape_and_the_loss_is_exact(corpus, tmp_path):
    cfg = settings(corpus, tmp_path / "out", batch_size=7, dtype="float32")  # float32 evaluation: exact
    env = start_env(cfg)
    run = train.setup(cfg, None, env, Phases())
    from data import load_meta
    windows = ValWindows(run.data_dir, load_meta(run.data_dir), cfg, env)
    assert len(windows.x) % windows.rows == 0 and windows.count % windows.rows != 0  # a padded last batch
    shapes = []
    model = run.raw_model.eval()
    handle = model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    got = windows.loss(model, env)
    handle.remove()
    assert set(shapes) == {(windows.rows, cfg.block_size)}  # a compiled model compiles once
    with torch.no_grad():  # by hand: every window alone
        x, y = windows.x[:windows.count], windows.y[:windows.count]
        want = torch.cat([model(x[i:i + 1], y[i:i + 1])[1].view(1) for i in range(len(x))]).double().mean()
    assert got == pytest.approx(want.item(), rel=1e-6)


def test_evaluation_computes_in_its_own_dtype(corpus, tmp_path):
    """dtype=auto evaluates in bf16 on a CPU that computes it (faster: bench/bench_bf16.py) while
    the training steps stay in float32; the loss moves by far less than it tells, and the log line
    says which dtype measured it."""
    from common.device import default_dtype
    from data import load_meta
    from training.evaluate import val_label
    cfg = settings(corpus, tmp_path / "out", eval_full_val=True)
    env = start_env(cfg)
    assert env.dtype == torch.float32 and env.eval_dtype == default_dtype("cpu", use="eval")
    assert start_env(replace(cfg, dtype="float32")).eval_dtype == torch.float32  # asked for: both
    run = train.setup(cfg, None, env, Phases())
    windows = ValWindows(run.data_dir, load_meta(run.data_dir), cfg, env)
    model = run.raw_model.eval()
    f32 = RunEnv(torch.device("cpu"), torch.float32, False)
    b16 = RunEnv(torch.device("cpu"), torch.float32, False, eval_dtype=torch.bfloat16)
    exact, approx = windows.loss(model, f32), windows.loss(model, b16)
    assert approx != exact and abs(approx - exact) < 5e-3 * exact
    tokens = f"all {windows.count * cfg.block_size:,} val tokens"
    assert val_label(windows, cfg, f32) == tokens and val_label(windows, cfg, b16) == tokens + ", bfloat16"
    assert val_label(None, cfg, f32) == "3 random batches"


# -----------------------------------------------------------------------------
# the schedule follows the run

def test_a_shortened_run_still_anneals():
    cpu = build(TrainConfig, {"learning_rate": 1e-3, "min_lr": 1e-4, "max_iters": 500})
    assert cpu.lr_decay_iters is None and cpu.decay_iters == 500
    assert cpu.learning_rate * lr_scale(499, cpu) == pytest.approx(1e-4, rel=1e-3)
    assert schedule_warnings(cpu) == []


def test_schedules_that_do_not_fit_the_run_warn():
    long_decay = TrainConfig(max_iters=500, lr_decay_iters=2000)
    (w,) = schedule_warnings(long_decay)
    assert "never finishes its decay" in w and "0.000906" in w   # the figure, 9.06e-4
    (w,) = schedule_warnings(TrainConfig(max_iters=50, warmup_iters=100))
    assert "never reaches its peak" in w
    (w,) = schedule_warnings(TrainConfig(max_iters=100, warmup_iters=80, lr_schedule="wsd", cooldown_frac=0.3))
    assert "no stable phase" in w


def test_the_cpu_config_with_fewer_steps_ends_one_cooldown_step_above_min_lr(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["cpu", f"--dataset={corpus / 'tiny.txt'}", f"--data_root={corpus / 'prepared'}", f"--out_dir={out}",
            "--n_layer=1", "--n_embd=16", "--n_head=2", "--max_iters=150", "--log_interval=1",
            "--eval_interval=1000", "--eval_iters=1"]
    assert train.main(args) == 0
    lrs = [r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    # the last step (149) is one cooldown step of the 0.6 x 150 = 90 from configs/cpu.toml's min_lr of 0
    assert lrs[-1] == pytest.approx(6e-3 / 90, rel=1e-6)
    assert "warning" not in capsys.readouterr().err
    assert train.main(args[:3] + [f"--out_dir={tmp_path / 'b'}"] + args[4:] + ["--lr_decay_iters=300"]) == 0
    assert "warning: lr_decay_iters=300 is past max_iters=150" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# files: modes, leftovers, unusable paths

def test_files_are_written_with_the_usual_mode_and_no_temp_is_left(corpus, tmp_path):
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert train.main(argv(settings(corpus, out))) == 0
    finally:
        os.umask(old)
    for name in ("ckpt.pt", "last.pt", "loss.svg", "metrics.jsonl"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert not list(out.glob(".*"))


def test_stale_temp_files_are_cleaned_but_not_a_live_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temp_name(tmp_path / "last.pt").with_name(
        temp_name(tmp_path / "last.pt").name.replace(f".{os.getpid()}.", f".{int(dead.stdout)}."))
    live = temp_name(tmp_path / "ckpt.pt")                       # this process: still writing
    other = tmp_path / ".notes.txt.tmp"                          # not one of ours
    for p in (stale, live, other):
        p.write_bytes(b"x")
    assert clean_stale_temp_files(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_a_killed_save_leaves_nothing_behind_at_the_next_start(corpus, tmp_path):
    out = tmp_path / "out"
    assert train.main(argv(settings(corpus, out, max_iters=4))) == 0
    leftover = out / ".last.pt.somehost.123.tmp"                 # another host's, a week old
    leftover.write_bytes(b"half a checkpoint")
    os.utime(leftover, (1, 1))
    assert train.main(argv(settings(corpus, out, max_iters=6, init_from="resume"))) == 0
    assert not leftover.exists()


@pytest.mark.parametrize("out, words", [
    ("afile", "is a file, not a folder"),
    ("afile/out", "cannot create --out_dir"),
])
def test_unusable_out_dir_is_one_clear_line(corpus, tmp_path, capsys, out, words):
    (tmp_path / "afile").write_text("a file, not a folder")
    assert train.main(argv(settings(corpus, tmp_path / out))) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err


def test_atomic_write_syncs_the_file_then_its_folder(tmp_path, monkeypatch):
    """A power cut after atomic_write returns must not lose the file: its data is synced before
    the rename, and the folder (which holds the new name) after it."""
    synced, fsync = [], os.fsync

    def record(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), (tmp_path / "f.txt").exists()))
        fsync(fd)
    monkeypatch.setattr(os, "fsync", record)
    atomic_write(tmp_path / "f.txt", "data")
    assert [(Path(p).name, renamed) for p, renamed in synced] == [(temp_name(tmp_path / "f.txt").name, False),
                                                                    (tmp_path.name, True)]


def test_atomic_write_to_an_unusable_path_is_a_user_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        atomic_write(tmp_path / "f" / "g.txt", "y")
    with pytest.raises(UserError, match="is a folder"):
        atomic_write(tmp_path, "y")


# -----------------------------------------------------------------------------
# one call from Python

def test_load_run(corpus, tmp_path):
    out = tmp_path / "out"
    assert train.main(argv(settings(corpus, out))) == 0
    model, tokenizer = load_run(out, device="cpu")
    assert not model.training
    ids = tokenizer.encode("to be or")
    assert isinstance(ids, list) and tokenizer.decode(ids) == "to be or"
    text = tokenizer.decode(model.generate(torch.tensor([ids]), 10, temperature=0)[0].tolist())
    assert text.startswith("to be or") and len(text) == len("to be or") + 10
    last, _ = load_run(out, ckpt="last.pt", dtype=torch.bfloat16)
    assert last.wte.weight.dtype == torch.bfloat16 and not last.training
    with pytest.raises(UserError, match="no checkpoint nope.pt"):
        load_run(out, ckpt="nope.pt")
    with pytest.raises(UserError, match="does not exist: train first"):
        load_run(tmp_path / "missing")


def test_eval_at_start_false_skips_only_the_first_eval(corpus, tmp_path):
    out = tmp_path / "out"
    assert train.main(argv(settings(corpus, out, eval_at_start=False, eval_interval=4, max_iters=8))) == 0
    evals = [r["iter"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert evals == [4, 8]


def test_a_resumed_runs_first_step_is_warm_up_not_training_time(corpus, tmp_path):
    """Every process's first step (compilation, allocator warm-up) is reported apart, resumed or not."""
    out = tmp_path / "out"
    assert train.main(argv(settings(corpus, out, max_iters=4, lr_decay_iters=8))) == 0
    assert train.main(argv(settings(corpus, out, max_iters=8, lr_decay_iters=8, init_from="resume"))) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "warmup"] == [0, 4]
    phases = [r for r in records if r["kind"] == "phases"]
    assert len(phases) == 2 and all(p["warm_up"] > 0 and p["steps"] > 0 for p in phases)


def test_a_resume_keeps_this_runs_optimizer_kernels(corpus, tmp_path, monkeypatch):
    """A last.pt written on a CPU (for-loop AdamW) resumed in a run whose AdamW is fused (a CUDA
    run): the live flags win, and in float16 the GradScaler's step goes through (the for-loop
    AdamW refuses its found_inf). And back: a fused run's checkpoint does not fuse a CPU run."""
    out = tmp_path / "out"
    assert train.main(argv(settings(corpus, out, max_iters=4))) == 0
    adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: adamw(*a, **{**k, "fused": True}))
    cfg, ckpt, _ = load_settings([f"--out_dir={out}", "--init_from=resume", "--max_iters=8"])
    assert all(not g["fused"] for g in ckpt["optimizer"][-1]["param_groups"])
    fp16 = RunEnv(torch.device("cpu"), torch.float16, False)  # start_env refuses fp16 off CUDA
    run = train.setup(cfg, ckpt, fp16, Phases())
    assert all(g["fused"] for g in run.optimizers[-1].param_groups)
    params = list(run.raw_model.parameters())
    before = [p.detach().clone() for p in params]
    assert torch.isfinite(train.train_step(run, cfg, fp16, params))
    assert not all(torch.equal(a, p) for a, p in zip(before, params))
    run.checkpoints.save(["last.pt"], run.state, None)
    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    cfg, ckpt, _ = load_settings([f"--out_dir={out}", "--init_from=resume", "--max_iters=8"])
    run = train.setup(cfg, ckpt, start_env(cfg), Phases())
    assert not any(g["fused"] for g in run.optimizers[-1].param_groups)
